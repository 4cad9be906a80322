#!/usr/bin/env python3
"""Makes the pre-quantized variant of the omnicoder-tiny text model (stdlib only).

A checkpoint as users download them from the MLX community: the text decoder of
`../omnicoder-tiny/model.safetensors` (its `text.` prefix removed), every 2-D weight quantized to
MLX affine int4 with group size 64 (`mx.quantize`'s layout: `<p>.weight` U32 codes,
`<p>.scales` and `<p>.biases` F16), norms kept in F16, written as `mx.save_safetensors` writes a
file without metadata (`"__metadata__": null`), with an mlx-lm style `config.json` whose
`quantization` says `{"group_size": 64, "bits": 4}`.

The quantization itself is `omnipack quantize --format int4 --group-size 64` (bit-exact with
`mx.quantize`); this script selects the tensors, runs it and rewrites the header.

    cargo build --release -p omnipack-cli
    python3 examples/omnicoder-tiny-int4/make.py            # regenerate model.safetensors, config.json
    python3 examples/omnicoder-tiny-int4/make.py --check    # exit 1 if the committed files differ
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SOURCE = os.path.join(HERE, "..", "omnicoder-tiny", "model.safetensors")
SOURCE_CONFIG = os.path.join(HERE, "..", "omnicoder-tiny", "text-config.json")
PREFIX = "text."
QUANTIZATION = {"group_size": 64, "bits": 4}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    return header, data[8 + n :]


def write_safetensors(path, header, tensors):
    """`tensors`: name -> bytes, in the order of `header` (metadata first when present)."""
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in header:
            if name != "__metadata__":
                f.write(tensors[name])


def text_tensors(path):
    """The `text.*` tensors of the example, prefix removed, sorted by name."""
    header, data = read_safetensors(path)
    out_header, out = {}, {}
    offset = 0
    for name in sorted(k for k in header if k.startswith(PREFIX)):
        e = header[name]
        b, end = e["data_offsets"]
        new = name[len(PREFIX) :]
        out[new] = data[b:end]
        out_header[new] = {
            "dtype": e["dtype"],
            "shape": e["shape"],
            "data_offsets": [offset, offset + end - b],
        }
        offset += end - b
    return out_header, out


def quantized(omnipack, tmp):
    header, tensors = text_tensors(SOURCE)
    f16 = os.path.join(tmp, "text-f16.safetensors")
    write_safetensors(f16, header, tensors)
    q4 = os.path.join(tmp, "text-int4.safetensors")
    subprocess.run(
        [omnipack, "quantize", f16, "-o", q4, "--format", "int4", "--group-size", "64",
         "--keep", "*norm*"],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    header, data = read_safetensors(q4)
    header.pop("__metadata__", None)
    names = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    out_header = {"__metadata__": None}
    out = {}
    for name in names:
        b, end = header[name]["data_offsets"]
        out_header[name] = header[name]
        out[name] = data[b:end]
    model = os.path.join(tmp, "model.safetensors")
    write_safetensors(model, out_header, out)
    with open(model, "rb") as f:
        return f.read()


def config():
    with open(SOURCE_CONFIG) as f:
        c = json.load(f)
    c["quantization"] = dict(QUANTIZATION)
    c["quantization_config"] = dict(QUANTIZATION)
    return (json.dumps(c, indent=2, sort_keys=True) + "\n").encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files")
    ap.add_argument(
        "--omnipack",
        default=os.path.join(ROOT, "target", "release", "omnipack"),
        help="the omnipack binary (default: target/release/omnipack)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = {"model.safetensors": quantized(args.omnipack, tmp), "config.json": config()}
    status = 0
    for name, data in files.items():
        path = os.path.join(HERE, name)
        if args.check:
            with open(path, "rb") as f:
                same = f.read() == data
            print(("ok: " if same else "DIFFERS: ") + path)
            status |= 0 if same else 1
        else:
            with open(path, "wb") as f:
                f.write(data)
            print(f"wrote {path} ({len(data)} bytes)")
    return status


if __name__ == "__main__":
    sys.exit(main())
