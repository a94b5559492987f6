"""Records gguf-py's (llama.cpp's converter) encodings of awkward float32 values: test/fixtures/gguf/kernels.json.

Run: PYTHONPATH=/path/to/llama.cpp/gguf-py python tools/testing/gguf-kernels-fixture.py
"""
import base64, json, struct
import numpy as np
from gguf import quants, GGMLQuantizationType as T

rng = np.random.default_rng(7)
blocks = []
# ties: values whose scaled value is exactly k + 0.5 (amax 127 -> scale 1)
blocks.append(np.array([127.0] + [k + 0.5 for k in range(-15, 15)] + [-0.5], dtype=np.float32))
blocks.append(np.zeros(32, dtype=np.float32))                          # all zeros: scale 0
blocks.append(np.array([-3.0] + [0.0] * 30 + [1.5], dtype=np.float32))  # negative maximum
blocks.append((rng.standard_normal(32) * 1e-6).astype(np.float32))      # scale a float16 subnormal
blocks.append((rng.standard_normal(32) * 1e-9).astype(np.float32))      # scale underflows float16
blocks.append((rng.standard_normal(32) * 3e6).astype(np.float32))       # scale overflows float16
blocks.append(np.array([np.float32(2.0 ** -149) * (i + 1) for i in range(32)], dtype=np.float32))  # float32 subnormals
blocks.append((rng.standard_normal(32 * 64)).astype(np.float32))        # ordinary values
x = np.concatenate(blocks).astype(np.float32)
# half-way cases for float16 and bfloat16 rounding
extra = np.array([1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 65520.0, 65519.0, 2.0 ** -25, 3 * 2.0 ** -26, -0.0, np.inf, -np.inf], dtype=np.float32)
y = np.concatenate([x, extra, np.zeros(32 - len(extra) % 32, dtype=np.float32)]).astype(np.float32)
b64 = lambda a: base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()
out = {
    "about": "gguf-py quants of these float32 values (llama.cpp's converter): Q8_0 over x, F16 and BF16 over y",
    "x": b64(x),
    "q8_0": b64(quants.quantize(x.reshape(-1, 32), T.Q8_0)),
    "y": b64(y),
    "f16": b64(quants.quantize(y, T.F16)),
    "bf16": b64(quants.quantize(y, T.BF16)),
}
print(json.dumps(out, indent=1))
