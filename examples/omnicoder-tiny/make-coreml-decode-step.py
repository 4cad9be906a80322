#!/usr/bin/env python3
"""Builds the omnicoder-tiny Core ML decode step with coremltools' MIL builder (no torch).

    python3 -m venv /work/venvs/coreml && /work/venvs/coreml/bin/pip install coremltools==9.0 numpy
    /work/venvs/coreml/bin/python examples/omnicoder-tiny/make-coreml-decode-step.py

writes `omnicoder_decode_step.mlpackage/` and `omnicoder_decode_step.coreml.json` next to this
script (or under `--out DIR`). The model is an fp16 ML program for iOS 16 with the decode-step
contract omnipack checks:

* input `input_ids`: int32 `[1, 1]`;
* inputs `k_lat_{i}`, `v_lat_{i}` for the 4 layers: fp16 `[1, 4, S, 32]`, S flexible in 1..4096;
* outputs `logits` fp16 `[1, 1, 512]` and `nk_lat_{i}`, `nv_lat_{i}` `[1, 4, S + 1, 32]` (the
  caches with the new token appended).

Its weights are the example checkpoint's text tensors (`model.safetensors`, all seeded and
deterministic): the token embedding, the attention projections of every layer and `lm_head`.
The computation is one attention step per layer with a residual connection (no norms, no MLP): it
converts and validates, it is not a good language model.

This file is also a module: `scripts/make-coreml-fixtures.py` imports it to build the test
fixtures (smaller shapes, seeded weights, broken variants).
"""

import argparse
import json
import os
import struct
import sys
from dataclasses import dataclass, field, replace

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class DecodeStep:
    """What to build. Defaults: the example decode step."""

    layers: int = 4
    kv_heads: int = 4
    kv_head_dim: int = 32
    hidden: int = 128
    vocab: int = 512
    # iOS deployment target: 16, 17 or 18.
    target: int = 16
    # Upper bound of the flexible sequence axis of the cache inputs (stateful: the state length).
    seq_upper: int = 4096
    # Data type of the cache inputs and outputs: "fp16" or "fp32".
    cache_dtype: str = "fp16"
    # iOS 18 form: the caches are states (`ct.StateType`), updated in place at input `position`.
    stateful: bool = False
    # Output names left out of the model (broken fixtures).
    drop_outputs: tuple = ()
    # Weight rows that are all zero, constant, or hold one large outlier (compression fixtures).
    special_rows: bool = False
    names: dict = field(default_factory=dict)


def read_safetensors(path):
    """Reads an F16 safetensors file into numpy arrays (stdlib + numpy only)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F16", (name, info["dtype"])
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f2").reshape(info["shape"]).copy()
    return out


def example_weights(cfg, checkpoint):
    """The decode step's weights from the example checkpoint's `text.*` tensors."""
    t = read_safetensors(checkpoint)
    w = {"embed": t["text.model.embed_tokens.weight"], "lm_head": t["text.lm_head.weight"]}
    for i in range(cfg.layers):
        p = f"text.model.layers.{i}.self_attn."
        for n in "qkvo":
            w[f"{n}_{i}"] = t[p + f"{n}_proj.weight"]
    return w


def splitmix64(seed, n):
    """n uniform floats in [-1, 1) from a splitmix64 stream: the same on every machine."""
    out = np.empty(n, dtype=np.float64)
    x = seed & 0xFFFFFFFFFFFFFFFF
    mask = 0xFFFFFFFFFFFFFFFF
    for i in range(n):
        x = (x + 0x9E3779B97F4A7C15) & mask
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        out[i] = (z >> 11) / float(1 << 52) - 1.0
    return out


def seeded_weights(cfg, seed):
    """Uniform weights in about +-1/sqrt(fan_in), fp16, from a seeded splitmix64 stream."""
    kvd = cfg.kv_heads * cfg.kv_head_dim
    shapes = {"embed": (cfg.vocab, cfg.hidden)}
    for i in range(cfg.layers):
        shapes.update({f"q_{i}": (kvd, cfg.hidden), f"k_{i}": (kvd, cfg.hidden)})
        shapes.update({f"v_{i}": (kvd, cfg.hidden), f"o_{i}": (cfg.hidden, kvd)})
    shapes["lm_head"] = (cfg.vocab, cfg.hidden)
    w = {}
    for k, (name, shape) in enumerate(shapes.items()):
        n = shape[0] * shape[1]
        a = splitmix64(seed + 7919 * k, n).reshape(shape) / np.sqrt(shape[1])
        a = a.astype(np.float16)
        if cfg.special_rows:
            a[0, :] = 0.0  # all zero
            a[1, :] = np.float16(0.25)  # constant
            a[2, 5] = np.float16(24.0)  # one large outlier in an ordinary row
        w[name] = a
    return w


def _dtype(name):
    from coremltools.converters.mil.mil import types

    return {"fp16": (types.fp16, np.float16), "fp32": (types.fp32, np.float32)}[name]


def build_program(cfg, w):
    """The MIL program of the decode step."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, get_new_symbol, types

    nh, hd, kvd = cfg.kv_heads, cfg.kv_head_dim, cfg.kv_heads * cfg.kv_head_dim
    opset = {16: ct.target.iOS16, 17: ct.target.iOS17, 18: ct.target.iOS18}[cfg.target]
    cache_t, _ = _dtype(cfg.cache_dtype)
    cache_names = [f"{p}_lat_{i}" for i in range(cfg.layers) for p in "kv"]
    inputs = {"input_ids": mb.placeholder(shape=(1, 1), dtype=types.int32)}
    if cfg.stateful:
        inputs["position"] = mb.placeholder(shape=(1,), dtype=types.int32)
        for n in cache_names:
            inputs[n] = mb.state_tensor_placeholder(shape=(1, nh, cfg.seq_upper, hd), dtype=types.fp16)
    else:
        s = get_new_symbol()
        for n in cache_names:
            inputs[n] = mb.placeholder(shape=(1, nh, s, hd), dtype=cache_t)

    with Function(inputs, opset_version=opset) as f:
        x = mb.gather(x=w["embed"], indices=f.inputs["input_ids"], axis=0)  # [1, 1, hidden]
        outputs = []

        def heads(t, name):
            t = mb.reshape(x=t, shape=[1, 1, nh, hd])
            return mb.transpose(x=t, perm=[0, 2, 1, 3], name=name)  # [1, nh, 1, hd]

        if cfg.stateful:
            pos = f.inputs["position"]
            zero = np.array([0], dtype=np.int32)
            begin = mb.concat(values=[zero, zero, pos, zero], axis=0)
            end = mb.concat(
                values=[
                    np.array([1, nh], dtype=np.int32),
                    mb.add(x=pos, y=np.int32(1)),
                    np.array([hd], dtype=np.int32),
                ],
                axis=0,
            )
        for i in range(cfg.layers):
            q = heads(mb.linear(x=x, weight=w[f"q_{i}"]), f"q_{i}")
            k = heads(mb.linear(x=x, weight=w[f"k_{i}"]), f"k_new_{i}")
            v = heads(mb.linear(x=x, weight=w[f"v_{i}"]), f"v_new_{i}")
            if cfg.stateful:
                caches = []
                for p, new in (("k", k), ("v", v)):
                    state = f.inputs[f"{p}_lat_{i}"]
                    full = mb.slice_update(x=mb.read_state(input=state), update=new, begin=begin, end=end)
                    mb.coreml_update_state(state=state, value=full)
                    caches.append(mb.read_state(input=state, name=f"{p}_all_{i}"))
                nk, nv = caches
            else:
                kc, vc = f.inputs[f"k_lat_{i}"], f.inputs[f"v_lat_{i}"]
                if cfg.cache_dtype != "fp16":
                    kc, vc = mb.cast(x=kc, dtype="fp16"), mb.cast(x=vc, dtype="fp16")
                nk = mb.concat(values=[kc, k], axis=2, name=f"nk_{i}")
                nv = mb.concat(values=[vc, v], axis=2, name=f"nv_{i}")
            scores = mb.matmul(x=q, y=nk, transpose_y=True)
            scores = mb.mul(x=scores, y=np.float16(1.0 / np.sqrt(hd)))
            att = mb.matmul(x=mb.softmax(x=scores, axis=-1), y=nv)
            att = mb.reshape(x=mb.transpose(x=att, perm=[0, 2, 1, 3]), shape=[1, 1, kvd])
            x = mb.add(x=x, y=mb.linear(x=att, weight=w[f"o_{i}"]))
            if not cfg.stateful:
                for p, t in (("nk", nk), ("nv", nv)):
                    if cfg.cache_dtype != "fp16":
                        t = mb.cast(x=t, dtype=cfg.cache_dtype)
                    outputs.append((f"{p}_lat_{i}", t))
        logits = mb.linear(x=x, weight=w["lm_head"])
        outputs.insert(0, ("logits", logits))
        outputs = [(n, t) for n, t in outputs if n not in cfg.drop_outputs]
        f.set_outputs([mb.identity(x=t, name=n) for n, t in outputs])
    prog = Program()
    prog.add_function("main", f)
    return prog


def convert(cfg, prog):
    """ct.convert of the program with the decode step's flexible inputs or states."""
    import coremltools as ct

    _, cache_np = _dtype(cfg.cache_dtype)
    target = {16: ct.target.iOS16, 17: ct.target.iOS17, 18: ct.target.iOS18}[cfg.target]
    inputs = [ct.TensorType(name="input_ids", shape=(1, 1), dtype=np.int32)]
    cache_names = [f"{p}_lat_{i}" for i in range(cfg.layers) for p in "kv"]
    if cfg.stateful:
        # The states come from the program's state placeholders (ct.convert takes `states=`
        # only for PyTorch sources); they are StateType(TensorType fp16) in the description.
        inputs.append(ct.TensorType(name="position", shape=(1,), dtype=np.int32))
    else:
        seq = ct.RangeDim(lower_bound=1, upper_bound=cfg.seq_upper, default=1)
        shape = ct.Shape((1, cfg.kv_heads, seq, cfg.kv_head_dim))
        for n in cache_names:
            inputs.append(ct.TensorType(name=n, shape=shape, dtype=cache_np))
    return ct.convert(
        prog,
        inputs=inputs,
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16,
    )


def build(cfg, weights):
    return convert(cfg, build_program(cfg, weights))


WEIGHT_OPS_PREFIX = "constexpr_"


def report(path):
    """The numbers coremltools gives for a saved package (or .mlmodel): what tests compare with.

    Reads the package with `coremltools.models.MLModel(skip_model_load=True)` and loads its
    program with coremltools' MIL proto loader. Weight constants are `const` ops (except those
    that only feed `constexpr_*` ops: the parts of a compressed weight) and `constexpr_*` ops;
    parameters are the elements of their outputs of a floating-point type.
    """
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.converters.mil.mil import types

    m = ct.models.MLModel(path, skip_model_load=True)
    spec = m.get_spec()
    out = {"specification_version": spec.specificationVersion}
    if not spec.HasField("mlProgram"):
        out["model_type"] = spec.WhichOneof("Type")
        out["file_bytes"] = os.path.getsize(path)
        return out
    weights_dir = os.path.join(path, "Data", "com.apple.CoreML", "weights")
    try:
        prog = milproto_load(spec, spec.specificationVersion, file_weights_dir=weights_dir)
    except Exception as e:  # a deliberately broken fixture: count from the protobuf only
        prog = None
        out["mil_loader_error"] = f"{type(e).__name__}: {e}"
    ops = []

    def walk(block):
        for op in block.operations:
            ops.append(op)
            for b in op.blocks:
                walk(b)

    for fn in prog.functions.values() if prog else []:
        walk(fn)
    counts = {}
    for op in ops:
        counts[op.op_type] = counts.get(op.op_type, 0) + 1
    # Output names of the operations the protobuf holds: the loader adds constants of its own
    # (for example two unused scalars for a `cond`), which are not the model's.
    spec_names = set()

    def spec_outputs(block):
        for op in block.operations:
            spec_names.update(o.name for o in op.outputs)
            for b in op.blocks:
                spec_outputs(b)

    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            spec_outputs(block)
    weights = []
    for op in ops:
        if op.op_type != "const" and not op.op_type.startswith(WEIGHT_OPS_PREFIX):
            continue
        var = op.outputs[0]
        if var.name not in spec_names:
            continue
        users = var.child_ops
        if op.op_type == "const" and users and all(u.op_type.startswith(WEIGHT_OPS_PREFIX) for u in users):
            continue
        if not types.is_tensor(var.sym_type) and not types.is_scalar(var.sym_type):
            continue
        dtype = var.dtype
        if not types.is_float(dtype):
            continue
        shape = [int(d) for d in var.shape]
        weights.append({"name": var.name, "op": op.op_type, "dtype": types.builtin_to_string(dtype), "shape": shape, "parameters": int(np.prod(shape, dtype=np.int64))})
    weights.sort(key=lambda r: r["name"])

    # Blobs as the spec references them (coremltools' own protobuf classes).
    blobs = {}
    inline_bytes = 0

    def values_of(op_spec):
        for k, v in op_spec.attributes.items():
            yield k, v
        for k, arg in op_spec.inputs.items():
            for b in arg.arguments:
                if b.HasField("value"):
                    yield k, b.value

    def immediate_bytes(v):
        """Bytes of an immediate value as the protobuf stores it."""
        if not v.HasField("immediateValue"):
            return 0
        iv = v.immediateValue
        kind = iv.WhichOneof("value")
        if kind == "tensor":
            t = iv.tensor
            which = t.WhichOneof("value")
            if which is None:
                return 0
            vals = getattr(t, which).values
            per = {"floats": 4, "ints": 4, "bools": 1, "longInts": 8, "doubles": 8}
            if which in per:
                return per[which] * len(vals)
            if which == "strings":
                return sum(len(x.encode()) for x in vals)
            return len(vals)  # bytes
        if kind in ("tuple", "list"):
            return sum(immediate_bytes(x) for x in getattr(iv, kind).values)
        if kind == "dictionary":
            return sum(immediate_bytes(kv.key) + immediate_bytes(kv.value) for kv in iv.dictionary.values)
        return 0

    def spec_ops(block):
        for op in block.operations:
            yield op
            for b in op.blocks:
                yield from spec_ops(b)

    spec_counts = {}
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in spec_ops(block):
                spec_counts[op.type] = spec_counts.get(op.type, 0) + 1
                if op.type != "const" and not op.type.startswith(WEIGHT_OPS_PREFIX):
                    continue
                for key, v in values_of(op):
                    if v.HasField("blobFileValue"):
                        blobs[v.blobFileValue.offset] = v
                    elif key != "name":
                        inline_bytes += immediate_bytes(v)
    weight_bin = os.path.join(weights_dir, "weight.bin")
    by_dtype = {}
    with open(weight_bin, "rb") as f:
        data = f.read()
    for offset in sorted(blobs):
        sentinel, dt, size, _data_offset = struct.unpack_from("<IIQQ", data, offset)
        assert sentinel == 0xDEADBEEF
        name = BLOB_TYPES[dt]
        e = by_dtype.setdefault(name, {"blobs": 0, "bytes": 0})
        e["blobs"] += 1
        e["bytes"] += size
    (count, version) = struct.unpack_from("<II", data, 0)

    out.update(
        {
            "deployment_target": IOS[spec.specificationVersion],
            # As stored in the protobuf (the MIL loader shows `write_state` as `coreml_update_state`).
            "operations": dict(sorted(spec_counts.items())),
            "parameters": sum(r["parameters"] for r in weights) if prog else None,
            "weights": weights if prog else None,
            "weight_bin_bytes": os.path.getsize(weight_bin),
            "weight_bin_header": {"count": count, "version": version},
            "blob_count": len(blobs),
            # Immediate values of const / constexpr_* ops (their `name` attribute excluded).
            "inline_const_bytes": inline_bytes,
            "stored_bytes": sum(e["bytes"] for e in by_dtype.values()) + inline_bytes,
            "blobs_by_dtype": dict(sorted(by_dtype.items())),
        }
    )
    return out


# MIL blob storage data types (mlmodel/src/MILBlob/Blob/BlobDataType.hpp).
BLOB_TYPES = {1: "fp16", 2: "fp32", 3: "uint8", 4: "int8", 5: "bf16", 6: "int16", 7: "uint16", 8: "int4", 9: "uint1", 10: "uint2", 11: "uint4", 12: "uint3", 13: "uint6", 14: "int32", 15: "uint32", 16: "fp8e4m3fn", 17: "fp8e5m2"}
IOS = {6: "iOS15", 7: "iOS16", 8: "iOS17", 9: "iOS18", 10: "iOS26"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=HERE, help="folder to write into (default: next to this script)")
    ap.add_argument("--checkpoint", default=os.path.join(HERE, "model.safetensors"))
    ap.add_argument(
        "--target",
        type=int,
        choices=[16, 17, 18],
        default=16,
        help="iOS deployment target (default 16); other than 16, the files are named *_ios<target>",
    )
    args = ap.parse_args()
    import coremltools as ct

    cfg = replace(DecodeStep(), target=args.target)
    model = build(cfg, example_weights(cfg, args.checkpoint))
    os.makedirs(args.out, exist_ok=True)
    stem = "omnicoder_decode_step" if args.target == 16 else f"omnicoder_decode_step_ios{args.target}"
    pkg = os.path.join(args.out, f"{stem}.mlpackage")
    if os.path.exists(pkg):
        import shutil

        shutil.rmtree(pkg)
    model.save(pkg)
    numbers = {"generator": f"coremltools {ct.__version__}", "architecture": {"layers": cfg.layers, "kv_heads": cfg.kv_heads, "kv_head_dim": cfg.kv_head_dim, "hidden_size": cfg.hidden, "vocab_size": cfg.vocab}, "max_seq_len": cfg.seq_upper}
    numbers.update(report(pkg))
    with open(os.path.join(args.out, f"{stem}.coreml.json"), "w") as f:
        json.dump(numbers, f, indent=2)
        f.write("\n")
    print(f"wrote {pkg}: {numbers['parameters']} parameters, weight.bin {numbers['weight_bin_bytes']} bytes, {numbers['blob_count']} blobs")


if __name__ == "__main__":
    sys.exit(main())
