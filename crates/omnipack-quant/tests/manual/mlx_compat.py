"""Manual cross-check against the real MLX (not run in CI; needs `pip install "mlx[cpu]"`).

    python3 crates/omnipack-quant/tests/manual/mlx_compat.py target/debug/omnipack IN.safetensors

For every bits x group combination, runs `omnipack quantize`, loads the output with
`mx.load` (as mlx-lm does) and checks that every quantized tensor equals `mx.quantize` of
the source (codes, scales, biases, bit for bit), that `mx.dequantize` works on it, and that
the metadata says `format: mlx`.
"""
import subprocess
import sys
import tempfile

import mlx.core as mx

omnipack, src = sys.argv[1], sys.argv[2]
source = mx.load(src)
checked = 0
with tempfile.TemporaryDirectory() as d:
    for bits in (2, 3, 4, 6, 8):
        for group in (32, 64, 128):
            out = f"{d}/q.safetensors"
            subprocess.run([omnipack, "quantize", src, "-o", out, "--format", f"int{bits}",
                            "--group-size", str(group)], check=True, capture_output=True)
            q, meta = mx.load(out, return_metadata=True)
            assert meta.get("format") == "mlx", meta
            for name, w in source.items():
                p = name[: -len("weight")]
                if not (name.endswith("weight") and w.ndim == 2 and w.shape[-1] % group == 0):
                    assert mx.array_equal(q[name], w), name
                    continue
                wq, s, b = mx.quantize(w, group_size=group, bits=bits)
                assert q[name].dtype == mx.uint32 and q[name].shape == wq.shape, name
                assert mx.array_equal(q[name], wq), (name, bits, group)
                assert q[p + "scales"].dtype == w.dtype, name
                assert mx.array_equal(q[p + "scales"], s), (name, "scales")
                assert mx.array_equal(q[p + "biases"], b), (name, "biases")
                mx.dequantize(q[name], q[p + "scales"], q[p + "biases"], group_size=group, bits=bits)
                checked += 1
print(f"ok: {checked} quantized tensors identical to mx.quantize ({mx.__version__})")
