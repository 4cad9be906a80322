#!/usr/bin/env python3
"""Deterministic generator for the omnicoder-tiny example checkpoint (stdlib only).

Writes `model.safetensors` (all tensors F16) next to this script, or to the path given with
`--out PATH`. Every value comes from a seeded splitmix64 stream and integer arithmetic that is
exact in binary floating point, so the output is byte-identical on every machine and Python 3
version.

    python3 examples/omnicoder-tiny/generate.py            # regenerate model.safetensors
    python3 examples/omnicoder-tiny/generate.py --check    # exit 1 if the committed file differs
"""

import argparse
import json
import os
import struct
import sys

SEED = 0x0A11C0DE

# Text decoder (the decode step of the manifests): 4 layers, 4 KV heads of 32, hidden 128.
# Its tensors are named as mlx-lm's `llama` model expects them (under the `text.` prefix), and
# `text-config.json` describes it, so the text bundles load in mlx-lm and MLX Swift.
LAYERS = 4
KV_HEADS = 4
KV_HEAD_DIM = 32
HIDDEN = 128
VOCAB = 512
INTERMEDIATE = 384

# Image and video decoders: small MLP-style decoders whose 2-D weights have last axes that
# divide by 128 (so every group size quantizes them) plus norms and biases kept as they are.
DEC_WIDTH = 256
PATCH_PIXELS = 16 * 16 * 3  # 768


def tensor_specs():
    """(name, shape, kind) in a fixed order; kind is 'w' (weight), 'norm' or 'bias'."""
    specs = [("text.model.embed_tokens.weight", (VOCAB, HIDDEN), "w")]
    for i in range(LAYERS):
        p = f"text.model.layers.{i}."
        specs += [
            (p + "self_attn.q_proj.weight", (KV_HEADS * KV_HEAD_DIM, HIDDEN), "w"),
            (p + "self_attn.k_proj.weight", (KV_HEADS * KV_HEAD_DIM, HIDDEN), "w"),
            (p + "self_attn.v_proj.weight", (KV_HEADS * KV_HEAD_DIM, HIDDEN), "w"),
            (p + "self_attn.o_proj.weight", (HIDDEN, KV_HEADS * KV_HEAD_DIM), "w"),
            (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN), "w"),
            (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN), "w"),
            (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE), "w"),
            (p + "input_layernorm.weight", (HIDDEN,), "norm"),
            (p + "post_attention_layernorm.weight", (HIDDEN,), "norm"),
        ]
    specs += [
        ("text.model.norm.weight", (HIDDEN,), "norm"),
        ("text.lm_head.weight", (VOCAB, HIDDEN), "w"),
    ]
    for kind in ("image", "video"):
        p = kind + "."
        specs += [
            (p + "latent_in.weight", (DEC_WIDTH, HIDDEN), "w"),
            (p + "latent_in.bias", (DEC_WIDTH,), "bias"),
        ]
        for b in range(2):
            q = f"{p}blocks.{b}."
            specs += [
                (q + "norm.weight", (DEC_WIDTH,), "norm"),
                (q + "norm.bias", (DEC_WIDTH,), "bias"),
                (q + "fc1.weight", (2 * DEC_WIDTH, DEC_WIDTH), "w"),
                (q + "fc1.bias", (2 * DEC_WIDTH,), "bias"),
                (q + "fc2.weight", (DEC_WIDTH, 2 * DEC_WIDTH), "w"),
                (q + "fc2.bias", (DEC_WIDTH,), "bias"),
            ]
        if kind == "video":
            specs += [
                (p + "temporal.weight", (DEC_WIDTH, DEC_WIDTH), "w"),
                (p + "temporal.bias", (DEC_WIDTH,), "bias"),
            ]
        specs += [
            (p + "norm_out.weight", (DEC_WIDTH,), "norm"),
            (p + "to_pixels.weight", (PATCH_PIXELS, DEC_WIDTH), "w"),
            (p + "to_pixels.bias", (PATCH_PIXELS,), "bias"),
        ]
    return specs


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & 0xFFFFFFFFFFFFFFFF

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)


def values(rng, count, kind, fan_in):
    """Exactly representable doubles: k / 2^23 scaled by a power of two, then rounded to f16."""
    out = []
    if kind == "w":
        # Uniform in about +-1/sqrt(fan_in): pick the power of two at or below it.
        shift = 0
        while (1 << (2 * (shift + 1))) <= fan_in:
            shift += 1
        for _ in range(count):
            k = (rng.next() >> 40) - (1 << 23)  # in [-2^23, 2^23)
            out.append(k / float(1 << (23 + shift)))
    elif kind == "norm":
        for _ in range(count):
            k = (rng.next() >> 44) - (1 << 19)
            out.append(1.0 + k / float(1 << 23))  # 1 +- 1/16
    else:
        for _ in range(count):
            k = (rng.next() >> 44) - (1 << 19)
            out.append(k / float(1 << 25))  # +- 1/64
    return out


def build():
    rng = SplitMix64(SEED)
    header = {"__metadata__": {"format": "pt", "generator": "omnicoder-tiny generate.py v2"}}
    chunks = []
    offset = 0
    for name, shape, kind in tensor_specs():
        count = 1
        for d in shape:
            count *= d
        data = struct.pack("<%de" % count, *values(rng, count, kind, shape[-1]))
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        chunks.append(data)
    head = json.dumps(header, separators=(",", ":"), sort_keys=False).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(here, "model.safetensors"))
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing")
    args = ap.parse_args()
    blob = build()
    if args.check:
        with open(args.out, "rb") as f:
            same = f.read() == blob
        print(("ok: " if same else "DIFFERS: ") + args.out)
        return 0 if same else 1
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, args.out)
    print("wrote %s (%d bytes)" % (args.out, len(blob)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
