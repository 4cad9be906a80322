"""Manual cross-check against the real MLX (not run in CI; needs `pip install "mlx[cpu]"`).

    python3 crates/omnipack-quant/tests/manual/mlx_compat.py target/debug/omnipack IN.safetensors

For every bits x group combination, runs `omnipack quantize`, loads the output with
`mx.load` (as mlx-lm does) and checks that every quantized tensor equals `mx.quantize` of
the source (codes, scales, biases, bit for bit), that `mx.dequantize` works on it, and that
the metadata says `format: mlx`. It also checks the arithmetic omnipack's quality measurement
assumes (`mx.dequantize` is `round(round(scale * q) + bias)` in the scales' dtype), and, with
`--method mse`, that the file has `mx.quantize`'s tensors, dtypes and shapes, that no group
dequantizes (by `mx.dequantize`) worse than `mx.quantize`'s, and that the SQNR omnipack prints
is the SQNR of `mx.dequantize`'s reconstruction.
"""
import re
import subprocess
import sys
import tempfile

import mlx.core as mx
import numpy as np

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


def f64(a):
    return np.array(a.astype(mx.float32)).astype(np.float64)


def groups_sq_err(w, deq, group):
    return ((f64(w) - f64(deq)) ** 2).reshape(w.shape[0], -1, group).sum(axis=-1)


exact = 0
mse_checked = 0
with tempfile.TemporaryDirectory() as d:
    for bits in (2, 3, 4, 6, 8):
        for group in (32, 64, 128):
            out = f"{d}/q.safetensors"
            run = subprocess.run([omnipack, "quantize", src, "-o", out, "--format", f"int{bits}",
                                  "--group-size", str(group), "--method", "mse"],
                                 check=True, capture_output=True, text=True)
            printed = float(re.search(r"SQNR (-?[0-9.]+) dB", run.stderr).group(1))
            q = mx.load(out)
            err = ref = 0.0
            for name, w in source.items():
                p = name[: -len("weight")]
                if not (name.endswith("weight") and w.ndim == 2 and w.shape[-1] % group == 0):
                    continue
                wq, s, b = mx.quantize(w, group_size=group, bits=bits)
                # mx.dequantize rounds the product and the sum to the scales' dtype.
                rtn = mx.dequantize(wq, s, b, group_size=group, bits=bits)
                ones = mx.ones(s.shape, dtype=mx.float32)
                codes = mx.dequantize(wq, ones, mx.zeros_like(ones), group_size=group, bits=bits)
                prod = codes.reshape(w.shape[0], -1, group) * s.astype(mx.float32)[..., None]
                emul = (prod.astype(w.dtype).astype(mx.float32) + b.astype(mx.float32)[..., None])
                assert mx.array_equal(emul.astype(w.dtype).reshape(rtn.shape), rtn), name
                exact += 1
                for part, want in ((name, wq), (p + "scales", s), (p + "biases", b)):
                    assert q[part].dtype == want.dtype and q[part].shape == want.shape, part
                deq = mx.dequantize(q[name], q[p + "scales"], q[p + "biases"], group_size=group,
                                    bits=bits)
                e_mse, e_rtn = groups_sq_err(w, deq, group), groups_sq_err(w, rtn, group)
                assert (e_mse <= e_rtn).all(), (name, bits, group, (e_mse - e_rtn).max())
                err += e_mse.sum()
                ref += (f64(w) ** 2).sum()
                mse_checked += 1
            sqnr = 10 * np.log10(ref / err)
            assert abs(sqnr - printed) < 0.01, (bits, group, sqnr, printed)
print(f"ok: mx.dequantize is round(round(scale * q) + bias) on {exact} tensors; "
      f"{mse_checked} mse tensors never worse per group than mx.quantize, printed SQNR matches")
