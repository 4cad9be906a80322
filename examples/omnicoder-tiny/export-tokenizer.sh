#!/bin/sh
# Deterministic tokenizer exporter for the omnicoder-tiny example (POSIX sh, no dependencies).
#
#   export-tokenizer.sh --out DIR
#
# Writes DIR/tokenizer.json: a Hugging Face `tokenizers` WordLevel tokenizer with 512 ids
# (4 specials, 256 byte tokens <0x00>..<0xFF>, 252 word pieces). Used by the `tokenizer` data
# component of the manifests through `source.command`, so the exporter path of omnipack runs on
# any machine. The same arguments always give the same bytes.
set -eu

out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || { echo "export-tokenizer.sh: --out needs a value" >&2; exit 2; }
               out="$2"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        *) echo "export-tokenizer.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || { echo "usage: export-tokenizer.sh --out DIR" >&2; exit 2; }
mkdir -p "$out"

tmp="$out/tokenizer.json.tmp"
{
    printf '{\n  "version": "1.0",\n  "truncation": null,\n  "padding": null,\n'
    printf '  "added_tokens": [\n'
    id=0
    for t in '<pad>' '<unk>' '<bos>' '<eos>'; do
        sep=','
        [ "$id" -eq 3 ] && sep=''
        printf '    {"id": %d, "content": "%s", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}%s\n' "$id" "$t" "$sep"
        id=$((id + 1))
    done
    printf '  ],\n  "normalizer": null,\n  "pre_tokenizer": {"type": "Whitespace"},\n  "post_processor": null,\n  "decoder": null,\n'
    printf '  "model": {\n    "type": "WordLevel",\n    "unk_token": "<unk>",\n    "vocab": {\n'
    printf '      "<pad>": 0,\n      "<unk>": 1,\n      "<bos>": 2,\n      "<eos>": 3,\n'
    b=0
    while [ "$b" -lt 256 ]; do
        printf '      "<0x%02X>": %d,\n' "$b" $((b + 4))
        b=$((b + 1))
    done
    w=0
    while [ "$w" -lt 252 ]; do
        sep=','
        [ "$w" -eq 251 ] && sep=''
        printf '      "w%03d": %d%s\n' "$w" $((w + 260)) "$sep"
        w=$((w + 1))
    done
    printf '    }\n  }\n}\n'
} > "$tmp"
mv "$tmp" "$out/tokenizer.json"
