#!/usr/bin/env python3
"""Writes tests/fixtures/quants.gguf (one tensor per supported ggml type, random blocks) and
tests/fixtures/quants_expected.safetensors (gguf-py's dequantization of each, in f32).

Needs numpy, gguf and safetensors (`pip install numpy gguf safetensors`). Run from the repository
root: python3 scripts/make_gguf_fixtures.py

The quantized blocks are random bytes with the f16 scale fields set to finite values, so every
bit pattern of the quants is exercised; gguf-py's `gguf.quants.dequantize` is the reference.
"""

import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from gguf.quants import dequantize
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")

# (type, elements per block, bytes per block, byte offsets of f16 scale fields)
TYPES = [
    (T.Q8_0, 32, 34, [0]),
    (T.Q4_0, 32, 18, [0]),
    (T.Q4_1, 32, 20, [0, 2]),
    (T.Q4_K, 256, 144, [0, 2]),
    (T.Q6_K, 256, 210, [208]),
]


def main():
    rng = np.random.default_rng(1234)
    w = GGUFWriter(os.path.join(OUT, "quants.gguf"), "llama")
    expected = {}
    rows, cols = 4, 512
    for qtype, per_block, nbytes, scales in TYPES:
        blocks = rows * cols // per_block
        raw = rng.integers(0, 256, size=(blocks, nbytes), dtype=np.uint8)
        for off in scales:
            vals = rng.uniform(0.001, 0.1, size=blocks).astype(np.float16)
            vals[::7] *= -1  # some negative scales too
            raw[:, off:off + 2] = vals.view(np.uint8).reshape(blocks, 2)
        raw = raw.reshape(rows, cols // per_block * nbytes)
        name = f"t.{qtype.name.lower()}"
        w.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = dequantize(raw, qtype).astype(np.float32).reshape(rows, cols)
    for name, dtype, np_dtype in [("t.f16", T.F16, np.float16), ("t.f32", T.F32, np.float32)]:
        x = rng.standard_normal((rows, cols)).astype(np_dtype)
        w.add_tensor(name, x, raw_dtype=dtype)
        expected[name] = x.astype(np.float32)
    bf = rng.standard_normal((rows, cols)).astype(np.float32)
    bits = (bf.view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("t.bf16", bits.view(np.uint8).reshape(rows, cols * 2), raw_dtype=T.BF16)
    expected["t.bf16"] = (bits.astype(np.uint32) << 16).view(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file({k: np.ascontiguousarray(v) for k, v in expected.items()},
              os.path.join(OUT, "quants_expected.safetensors"))
    print(sorted(expected))


if __name__ == "__main__":
    main()
