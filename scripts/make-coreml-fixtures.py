#!/usr/bin/env python3
"""Makes the Core ML test fixtures of crates/omnipack-coreml/tests/data with coremltools 9.0.

    /work/venvs/coreml/bin/python scripts/make-coreml-fixtures.py [--out DIR] [--only NAME]...

Every fixture is a decode step built by examples/omnicoder-tiny/make-coreml-decode-step.py's
builder (MIL builder, no torch) with seeded weights, then (for some) compressed with
coremltools.optimize.coreml or edited at the protobuf level. `fixtures.json` records, per
fixture, how it was made and the numbers coremltools gives (operations, parameters, blobs,
weight.bin bytes). `--one NAME --out DIR` builds a single fixture in this process (the
separate-process conversions use it).
"""

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
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


def int8_config():
    import coremltools.optimize.coreml as cto

    op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
    return cto.OptimizationConfig(global_config=op), {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"}


def int4_config(block):
    import coremltools.optimize.coreml as cto

    op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=block)
    return cto.OptimizationConfig(global_config=op), {"mode": "linear_symmetric", "dtype": "int4", "granularity": "per_block", "block_size": block}


# name -> (config, how: "convert" | ("compress", source, config fn) | ("edit", what))
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
    if how == "convert" or (isinstance(how, tuple) and how[0] == "edit"):
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--one", help="build only this fixture, in this process, and print its record")
    ap.add_argument("--report-only", action="store_true", help="refresh the numbers in fixtures.json from the packages already in --out")
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
    with open(os.path.join(args.out, "fixtures.json"), "w") as f:
        json.dump({"generator": f"coremltools {ct.__version__}", "seed": SEED, "fixtures": records}, f, indent=1, sort_keys=True)
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
