#!/usr/bin/env python3
"""Makes the Core ML test fixtures of crates/omnipack-coreml/tests/data with coremltools 9.0.

    /work/venvs/coreml/bin/python scripts/make-coreml-fixtures.py [--out DIR] [--only NAME]...

Every fixture is a decode step built by examples/omnicoder-tiny/make-coreml-decode-step.py's
builder (MIL builder, no torch) with seeded weights (or the example checkpoint's), or the
"compression zoo" program below; some are then compressed with coremltools.optimize.coreml or
edited at the protobuf level. `fixtures.json` records, per fixture, how it was made and the
numbers coremltools gives (operations, parameters, blobs, weight.bin bytes), and under
`compressions` every `linear_quantize_weights` run omnipack's compression is compared with:
its source, its configuration, omnipack's equivalent configuration and what coremltools wrote
(weight.bin digest and size, every constexpr_* operation with its values, every blob-stored
const). Only a few compressed packages are committed; `--compressed-out DIR` also saves all
of them there (scripts/check-coreml uses it). `--one NAME --out DIR` builds a single fixture in
this process (the separate-process conversions use it).
"""

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "crates", "omnipack-coreml", "tests", "data")

_spec = importlib.util.spec_from_file_location("decode_step", os.path.join(ROOT, "examples", "omnicoder-tiny", "make-coreml-decode-step.py"))
ds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ds)

# Tiny: contract and reproducibility fixtures (every weight under coremltools' 2048-element
# compression threshold except the embedding and lm_head).
TINY = ds.DecodeStep(layers=4, kv_heads=2, kv_head_dim=16, hidden=32, vocab=64, target=17)
# Compressible: every weight has >= 2048 elements (64 x 64 projections, 128 x 64 embedding and
# lm_head) and rows that are all zero, constant or hold one outlier.
COMPRESSIBLE = ds.DecodeStep(layers=4, kv_heads=2, kv_head_dim=32, hidden=64, vocab=128, target=17, special_rows=True)

SEED = 0x0C0DE5EED

EXAMPLE = os.path.join(ROOT, "examples", "omnicoder-tiny")
# The example decode step (fp16, iOS 16) as committed.
EXAMPLE_PACKAGE = os.path.join(EXAMPLE, "omnicoder_decode_step.mlpackage")


def int8_config():
    import coremltools.optimize.coreml as cto

    op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
    return cto.OptimizationConfig(global_config=op), {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"}


def int4_config(block):
    import coremltools.optimize.coreml as cto

    op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=block)
    return cto.OptimizationConfig(global_config=op), {"mode": "linear_symmetric", "dtype": "int4", "granularity": "per_block", "block_size": block}


# name -> (config, how: "convert" | "example" | "zoo" | ("compress", source, config fn) | ("edit", what))
FIXTURES = {
    "decode_step_ios16": (replace(TINY, target=16), "convert"),
    "decode_step_ios17": (replace(COMPRESSIBLE, target=17), "convert"),
    "decode_step_ios18": (replace(COMPRESSIBLE, target=18), "convert"),
    "decode_step_ios18_stateful": (replace(TINY, target=18, stateful=True), "convert"),
    "int8_per_channel_ios17": (None, ("compress", "decode_step_ios17", int8_config)),
    "int8_per_channel_ios18": (None, ("compress", "decode_step_ios18", int8_config)),
    "int4_block32_ios18": (None, ("compress", "decode_step_ios18", lambda: int4_config(32))),
    "int4_block64_ios18": (None, ("compress", "decode_step_ios18", lambda: int4_config(64))),
    # One model converted in two separate Python processes.
    "separate_process_a": (TINY, "convert"),
    "separate_process_b": (TINY, "convert"),
    # Broken decode steps for the contract checks (all iOS 17, otherwise TINY).
    "broken_missing_nv_lat_2": (replace(TINY, drop_outputs=("nv_lat_2",)), "convert"),
    "broken_kv_heads_4": (replace(TINY, kv_heads=4), "convert"),
    "broken_fp32_caches": (replace(TINY, cache_dtype="fp32"), "convert"),
    "broken_seq_upper_2048": (replace(TINY, seq_upper=2048), "convert"),
    "broken_int64_input_ids": (TINY, ("edit", "int64_input_ids")),
    # The example decode step (its checkpoint's weights) for iOS 17 and iOS 18: sources of the
    # example's compressions.
    "omnicoder_decode_step_ios17": (replace(ds.DecodeStep(), target=17), "example"),
    "omnicoder_decode_step_ios18": (replace(ds.DecodeStep(), target=18), "example"),
    # Every weight-selection rule of linear_quantize_weights in one small program.
    "compression_zoo_ios17": (17, "zoo"),
    "compression_zoo_ios18": (18, "zoo"),
}

# Every compression omnipack is compared with: name -> (source fixture or "example",
# coremltools config fn, omnipack configuration, committed package or None).
ZOO_KEEP = ["weight_with_inf*"]
COMPRESSIONS = {
    "example_int8": ("example", int8_config, {"format": "int8"}, None),
    "omnicoder_decode_step_ios17_int8": ("omnicoder_decode_step_ios17", int8_config, {"format": "int8"}, None),
    "omnicoder_decode_step_ios18_int8": ("omnicoder_decode_step_ios18", int8_config, {"format": "int8"}, None),
    "omnicoder_decode_step_ios18_int4_b32": ("omnicoder_decode_step_ios18", lambda: int4_config(32), {"format": "int4", "block_size": 32}, None),
    "omnicoder_decode_step_ios18_int4_b64": ("omnicoder_decode_step_ios18", lambda: int4_config(64), {"format": "int4", "block_size": 64}, None),
    "omnicoder_decode_step_ios18_int4_b128": ("omnicoder_decode_step_ios18", lambda: int4_config(128), {"format": "int4", "block_size": 128}, None),
    "decode_step_ios17_int8": ("decode_step_ios17", int8_config, {"format": "int8"}, "int8_per_channel_ios17"),
    "decode_step_ios18_int8": ("decode_step_ios18", int8_config, {"format": "int8"}, "int8_per_channel_ios18"),
    "decode_step_ios18_int4_b32": ("decode_step_ios18", lambda: int4_config(32), {"format": "int4", "block_size": 32}, "int4_block32_ios18"),
    "decode_step_ios18_int4_b64": ("decode_step_ios18", lambda: int4_config(64), {"format": "int4", "block_size": 64}, "int4_block64_ios18"),
    # Input axes of 64: no weight divides into blocks of 128, so nothing is compressed.
    "decode_step_ios18_int4_b128": ("decode_step_ios18", lambda: int4_config(128), {"format": "int4", "block_size": 128}, None),
    "compression_zoo_ios17_int8": ("compression_zoo_ios17", int8_config, {"format": "int8", "keep": ZOO_KEEP}, None),
    "compression_zoo_ios18_int8": ("compression_zoo_ios18", int8_config, {"format": "int8", "keep": ZOO_KEEP}, None),
    "compression_zoo_ios18_int4_b16": ("compression_zoo_ios18", lambda: int4_config(16), {"format": "int4", "block_size": 16, "keep": ZOO_KEEP}, None),
    "compression_zoo_ios18_int4_b32": ("compression_zoo_ios18", lambda: int4_config(32), {"format": "int4", "block_size": 32, "keep": ZOO_KEEP}, None),
}

NOTES = {
    "broken_int64_input_ids": "coremltools 9.0 silently converts an int64 input to int32, so this one is the TINY "
    "iOS 17 decode step with its protobuf edited in Python: the description's `input_ids` multiArrayType dataType "
    "set to 131136 (0x20000 | 64, the value an int64 would have in ArrayDataType's scheme; Core ML defines none) "
    "and the ML program's function input `input_ids` set to INT64.",
}


def save(model, path):
    if os.path.exists(path):
        shutil.rmtree(path)
    model.save(path)


def edit_int64_input_ids(path):
    """Rewrites model.mlmodel in place: input_ids as int64 in the description and the program."""
    from coremltools.proto import MIL_pb2, Model_pb2

    mlmodel = os.path.join(path, "Data", "com.apple.CoreML", "model.mlmodel")
    spec = Model_pb2.Model()
    with open(mlmodel, "rb") as f:
        spec.ParseFromString(f.read())
    for inp in spec.description.input:
        if inp.name == "input_ids":
            inp.type.multiArrayType.dataType = 0x20000 | 64
    for fn in spec.mlProgram.functions.values():
        for inp in fn.inputs:
            if inp.name == "input_ids":
                inp.type.tensorType.dataType = MIL_pb2.INT64
    with open(mlmodel, "wb") as f:
        f.write(spec.SerializeToString())


def make_one(name, out):
    import coremltools as ct

    cfg, how = FIXTURES[name]
    path = os.path.join(out, name + ".mlpackage")
    record = {}
    if how == "example":
        save(ds.build(cfg, ds.example_weights(cfg, os.path.join(EXAMPLE, "model.safetensors"))), path)
        record["config"] = {k: v for k, v in cfg.__dict__.items() if k != "names"}
        record["config"]["drop_outputs"] = list(cfg.drop_outputs)
        record["weights_from"] = "examples/omnicoder-tiny/model.safetensors"
    elif how == "zoo":
        save(build_zoo(cfg), path)
        record["config"] = {"target": cfg, "program": "compression zoo (see build_zoo)"}
    elif how == "convert" or (isinstance(how, tuple) and how[0] == "edit"):
        save(ds.build(cfg, ds.seeded_weights(cfg, SEED)), path)
        record["config"] = {k: v for k, v in cfg.__dict__.items() if k != "names"}
        record["config"]["drop_outputs"] = list(cfg.drop_outputs)
        if isinstance(how, tuple):
            edit_int64_input_ids(path)
            record["edited"] = NOTES[name]
    else:
        _, source, config_fn = how
        import coremltools.optimize.coreml as cto

        src = os.path.join(out, source + ".mlpackage")
        config, described = config_fn()
        model = cto.linear_quantize_weights(ct.models.MLModel(src, skip_model_load=True), config=config)
        save(model, path)
        record["compressed_from"] = source
        record["linear_quantize_weights"] = described
    return path, record


def compression_facts(numbers):
    """Which ops and dtypes a compression produced."""
    ops = sorted(k for k in numbers["operations"] if k.startswith("constexpr_"))
    return {"constexpr_ops": {k: numbers["operations"][k] for k in ops}, "blob_dtypes": sorted(numbers["blobs_by_dtype"])}


def zoo_weight(seed, shape, out_axis=0, dtype=None):
    """Seeded weights with, along the output axis, channel 0 all zero, channel 1 constant
    (0.25) and one large outlier (24.0) in channel 2."""
    import numpy as np

    dtype = dtype or np.float32
    n = int(np.prod(shape))
    fan_in = shape[1 - out_axis] if len(shape) > 1 else n
    a = (ds.splitmix64(seed, n).reshape(shape) / np.sqrt(fan_in)).astype(dtype)
    channel = lambda c: tuple(c if ax == out_axis else slice(None) for ax in range(len(shape)))
    a[channel(0)] = 0
    a[channel(1)] = 0.25
    outlier = [0] * len(shape)
    outlier[out_axis] = 2
    outlier[1 if out_axis == 0 else 0] = 5
    a[tuple(outlier)] = 24.0
    return a


def build_zoo(target):
    """A small fp16 ML program (one fp32 weight) with a const for every rule of
    linear_quantize_weights' weight selection: linear, matmul (weight as y, transposed y, as
    x), conv and conv_transpose axes; 2048 (kept) and 2112 elements; 6 output channels (scales
    and zero points stored in the program); a 1-D const; a weight holding an infinity; a
    weight two operations read along different axes; one read twice along the same axis; two
    128-channel weights (shared zero point); an fp32 weight; weights inside the branches of a
    `cond` (nested blocks)."""
    import numpy as np
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program

    opset = {17: ct.target.iOS17, 18: ct.target.iOS18}[target]
    inputs = {
        "x": mb.placeholder(shape=(1, 64)),
        "v": mb.placeholder(shape=(1, 512)),
        "z": mb.placeholder(shape=(2100,)),
        "img": mb.placeholder(shape=(1, 16, 6, 6)),
    }
    with Function(inputs, opset_version=opset) as f:
        x, v, z, img = (f.inputs[k] for k in ("x", "v", "z", "img"))
        outs = [
            mb.linear(x=x, weight=zoo_weight(1, (96, 64)), name="lin96"),
            mb.matmul(x=x, y=zoo_weight(2, (64, 80), out_axis=1), name="mm_y"),
            mb.matmul(x=x, y=zoo_weight(3, (48, 64)), transpose_y=True, name="mm_yt"),
            mb.matmul(x=zoo_weight(4, (40, 64)), y=mb.reshape(x=x, shape=[64, 1]), name="mm_x"),
            mb.linear(x=x, weight=zoo_weight(5, (32, 64)), name="lin_2048"),
            mb.linear(x=x, weight=zoo_weight(6, (33, 64)), name="lin_2112"),
            mb.linear(x=v, weight=zoo_weight(7, (6, 512)), name="lin6"),
            mb.linear(x=v, weight=zoo_weight(17, (6, 512)), name="lin_fp32"),
            mb.add(x=z, y=ds.splitmix64(8, 2100).astype(np.float32), name="add1d"),
        ]
        inf = zoo_weight(9, (64, 64))
        inf[7, 7] = np.inf
        outs.append(mb.linear(x=x, weight=mb.const(val=inf, name="weight_with_inf"), name="lin_inf"))
        shared = mb.const(val=zoo_weight(10, (64, 64)), name="weight_two_axes")
        outs.append(mb.linear(x=x, weight=shared, name="lin_shared"))
        outs.append(mb.matmul(x=x, y=shared, name="mm_shared"))
        twice = mb.const(val=zoo_weight(11, (128, 64)), name="weight_used_twice")
        outs.append(mb.add(x=mb.linear(x=x, weight=twice), y=mb.linear(x=mb.mul(x=x, y=2.0), weight=twice), name="twice"))
        outs.append(mb.linear(x=x, weight=zoo_weight(12, (128, 64)), name="lin128"))
        conv = mb.conv(x=img, weight=zoo_weight(13, (32, 16, 3, 3)), name="conv")
        outs.append(mb.conv_transpose(x=conv, weight=zoo_weight(14, (32, 16, 3, 3), out_axis=1), name="convt"))
        pred = mb.greater(x=mb.reduce_sum(x=x), y=0.0)
        outs.append(
            mb.cond(
                pred=pred,
                _true_fn=lambda: mb.linear(x=x, weight=zoo_weight(15, (128, 64))),
                _false_fn=lambda: mb.linear(x=x, weight=zoo_weight(16, (128, 64))),
                name="branch",
            )
        )
        f.set_outputs([mb.identity(x=o, name=f"out_{i}") for i, o in enumerate(outs)])
    prog = Program()
    prog.add_function("main", f)
    # Built in fp32; cast to fp16 everywhere except `lin_fp32`, whose weight stays fp32.
    precision = ct.transform.FP16ComputePrecision(op_selector=lambda op: op.name != "lin_fp32")
    return ct.convert(prog, minimum_deployment_target=opset, compute_precision=precision)


# MIL data types by their protobuf number, named as omnipack names them.
MIL_TYPES = {1: "bool", 2: "string", 10: "fp16", 11: "fp32", 12: "fp64", 13: "bf16", 21: "int8", 22: "int16", 23: "int32", 24: "int64", 25: "int4", 31: "uint8", 32: "uint16", 33: "uint32", 34: "uint64", 35: "uint4", 36: "uint2", 37: "uint1", 38: "uint6", 39: "uint3"}


def value_record(v):
    """A value as the records show it: data type, shape, and its blob offset or its stored
    bytes (hex, little-endian)."""
    t = v.type.tensorType
    out = {"dtype": MIL_TYPES.get(t.dataType, str(t.dataType)), "shape": [d.constant.size for d in t.dimensions]}
    if v.HasField("blobFileValue"):
        out["blob"] = v.blobFileValue.offset
        return out
    tv = v.immediateValue.tensor
    which = tv.WhichOneof("value")
    if which == "bytes":
        raw = tv.bytes.values
    elif which == "floats":
        raw = struct.pack(f"<{len(tv.floats.values)}f", *tv.floats.values)
    elif which == "ints":
        raw = struct.pack(f"<{len(tv.ints.values)}i", *tv.ints.values)
    else:
        raw = repr(getattr(tv, which).values).encode() if which else b""
    out["inline"] = raw.hex()
    return out


def compression_record(path):
    """What a compressed package holds, for omnipack's tests: weight.bin's size and digest,
    every constexpr_* operation (name, type, output, values), every const whose value is in
    weight.bin (name, blob offset), in program order (nested blocks included)."""
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    with open(os.path.join(path, "Data", "com.apple.CoreML", "model.mlmodel"), "rb") as f:
        spec.ParseFromString(f.read())
    with open(os.path.join(path, "Data", "com.apple.CoreML", "weights", "weight.bin"), "rb") as f:
        data = f.read()
    constexpr, consts = [], []

    def walk(block):
        for op in block.operations:
            if op.type.startswith("constexpr_"):
                values = {k: value_record(v) for k, v in op.attributes.items() if k != "name"}
                for k, arg in op.inputs.items():
                    values[k] = value_record(arg.arguments[0].value)
                t = op.outputs[0].type.tensorType
                constexpr.append({"name": op.outputs[0].name, "type": op.type, "output": {"dtype": MIL_TYPES[t.dataType], "shape": [d.constant.size for d in t.dimensions]}, "values": dict(sorted(values.items()))})
            elif op.type == "const" and op.attributes["val"].HasField("blobFileValue"):
                consts.append({"name": op.outputs[0].name, "blob": op.attributes["val"].blobFileValue.offset})
            for b in op.blocks:
                walk(b)

    for name in sorted(spec.mlProgram.functions):
        fn = spec.mlProgram.functions[name]
        walk(fn.block_specializations[fn.opset])
    return {
        "weight_bin": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "blobs": struct.unpack_from("<I", data, 0)[0]},
        "constexpr_ops": constexpr,
        "blob_consts": consts,
    }


def compress_one(name, src_dir, out_dir):
    """Runs one entry of COMPRESSIONS with coremltools (in this process) into out_dir."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    source, config_fn, omnipack, _ = COMPRESSIONS[name]
    src = EXAMPLE_PACKAGE if source == "example" else os.path.join(src_dir, source + ".mlpackage")
    config, described = config_fn()
    model = cto.linear_quantize_weights(ct.models.MLModel(src, skip_model_load=True), config=config)
    path = os.path.join(out_dir, name + ".mlpackage")
    save(model, path)
    return path, {"source": source, "linear_quantize_weights": described, "omnipack": omnipack}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--one", help="build only this fixture, in this process, and print its record")
    ap.add_argument("--report-only", action="store_true", help="refresh the numbers in fixtures.json from the packages already in --out")
    ap.add_argument("--compress", help="run only this entry of COMPRESSIONS (sources from --out) into --compressed-out, in this process, and print its record")
    ap.add_argument("--compressed-out", help="also keep every compressed package here")
    args = ap.parse_args()
    import coremltools as ct

    if args.report_only:
        path = os.path.join(args.out, "fixtures.json")
        with open(path) as f:
            doc = json.load(f)
        for name, record in doc["fixtures"].items():
            if name.endswith(".mlmodel"):
                record.update(ds.report(os.path.join(args.out, name)))
                continue
            numbers = ds.report(os.path.join(args.out, name + ".mlpackage"))
            record.update(numbers)
            if "compressed_from" in record:
                record["compression"] = compression_facts(numbers)
        with open(path, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.write("\n")
        return 0

    os.makedirs(args.out, exist_ok=True)
    if args.compress:
        path, record = compress_one(args.compress, args.out, args.compressed_out)
        record.update(compression_record(path))
        print(json.dumps(record))
        return 0
    if args.one:
        path, record = make_one(args.one, args.out)
        print(json.dumps(record))
        return 0
    records = {}
    for name in FIXTURES:
        # Every conversion in its own Python process: the two `separate_process_*` ones must
        # be, and the others then do not depend on what an earlier conversion left behind.
        res = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--out", args.out, "--one", name],
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        record = json.loads(res.stdout.strip().splitlines()[-1])
        numbers = ds.report(os.path.join(args.out, name + ".mlpackage"))
        record.update(numbers)
        if "compressed_from" in record:
            record["compression"] = compression_facts(numbers)
        records[name] = record
        print(f"{name}: {numbers['parameters']} parameters, weight.bin {numbers['weight_bin_bytes']} bytes, {numbers['blob_count']} blobs", file=sys.stderr)
    neural = os.path.join(args.out, "neural_network.mlmodel")
    make_neural_network(neural)
    records["neural_network.mlmodel"] = ds.report(neural) | {"made_by": "coremltools.models.neural_network.NeuralNetworkBuilder: one inner product 8 -> 4, specification version 4"}
    compressions = {}
    with tempfile.TemporaryDirectory() as tmp:
        compressed_out = args.compressed_out or tmp
        os.makedirs(compressed_out, exist_ok=True)
        for name, (_, _, _, package) in COMPRESSIONS.items():
            res = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--out", args.out, "--compress", name, "--compressed-out", compressed_out],
                check=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            record = json.loads(res.stdout.strip().splitlines()[-1])
            if package:
                record["package"] = package
            compressions[name] = record
            print(f"{name}: {len(record['constexpr_ops'])} constexpr ops, weight.bin {record['weight_bin']['bytes']} bytes", file=sys.stderr)
    with open(os.path.join(args.out, "fixtures.json"), "w") as f:
        json.dump({"generator": f"coremltools {ct.__version__}", "seed": SEED, "fixtures": records, "compressions": compressions}, f, indent=1, sort_keys=True)
        f.write("\n")
    return 0


def make_neural_network(path):
    """An older neural-network `.mlmodel` single file (description only for omnipack)."""
    import numpy as np
    from coremltools.models import MLModel, datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    b = NeuralNetworkBuilder([("features", datatypes.Array(8))], [("scores", datatypes.Array(4))])
    w = (np.arange(32, dtype=np.float32).reshape(4, 8) - 16) / 16
    b.add_inner_product("fc", W=w, b=np.zeros(4, dtype=np.float32), input_channels=8, output_channels=4, has_bias=True, input_name="features", output_name="scores")
    b.spec.specificationVersion = 4
    MLModel(b.spec, skip_model_load=True).save(path)


if __name__ == "__main__":
    sys.exit(main())
