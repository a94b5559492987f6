"""Lets the reference (arcee-ai/mergekit 0.1.x, which pins pydantic ~2.10) start under pydantic >= 2.11.

mergekit's easy_define builds its task classes with pydantic.create_model(name, __base__=..., execute=fn, ...):
pydantic <= 2.10 put plain functions passed as fields into the class; 2.11 tries to make fields of them and fails
("Unable to generate pydantic-core schema for <class 'torch.Tensor'>"). This moves every plain function among
create_model's keyword arguments into __validators__, whose entries become class attributes as before.

Used by the bench only, through PYTHONPATH (bench/incremental.ts sets it for the reference's run); the installed
mergekit and pydantic are not changed. Imported by Python's site module at start-up.
"""
import inspect

try:
    import pydantic
except ImportError:  # not the reference's environment: nothing to do
    pydantic = None

if pydantic is not None and not getattr(pydantic.create_model, "_moe_forge_shim", False):
    _create_model = pydantic.create_model

    def create_model(__model_name, *args, **kwargs):
        funcs = {k: v for k, v in kwargs.items() if not k.startswith("__") and inspect.isfunction(v)}
        if funcs:
            for k in funcs:
                del kwargs[k]
            kwargs["__validators__"] = {**(kwargs.get("__validators__") or {}), **funcs}
        return _create_model(__model_name, *args, **kwargs)

    create_model._moe_forge_shim = True
    pydantic.create_model = create_model
