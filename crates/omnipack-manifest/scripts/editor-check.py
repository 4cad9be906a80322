#!/usr/bin/env python3
"""Checks the committed manifest schema in a real editor backend: yaml-language-server over LSP.

    npm install --prefix /tmp/yls yaml-language-server@1
    python3 crates/omnipack-manifest/scripts/editor-check.py /tmp/yls/node_modules/.bin/yaml-language-server

Opens the committed manifests (which name the schema on their first line) and asserts: no
diagnostics on the valid ones, the misspelt key of errors/unknown-key-component.yaml at 15:5,
the four roles (with descriptions) when completing `role:`, and a description on hover.
Stdlib only; exits 1 on the first failed expectation. Not part of CI (needs Node).
"""
import json, os, pathlib, queue, subprocess, sys, threading, time

REPO = pathlib.Path(__file__).resolve().parents[3]


class Server:
    def __init__(self, exe):
        self.p = subprocess.Popen([exe, "--stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.q, self.next_id = queue.Queue(), 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        f = self.p.stdout
        while True:
            headers = {}
            while True:
                line = f.readline()
                if not line:
                    return
                line = line.decode().strip()
                if not line:
                    break
                k, v = line.split(":", 1)
                headers[k.lower()] = v.strip()
            self.q.put(json.loads(f.read(int(headers["content-length"]))))

    def _write(self, msg):
        b = json.dumps(msg).encode()
        self.p.stdin.write(b"Content-Length: %d\r\n\r\n" % len(b) + b)
        self.p.stdin.flush()

    def request(self, method, params):
        self.next_id += 1
        self._write({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        i = self.next_id
        return self.wait(lambda m: m.get("id") == i).get("result")

    def notify(self, method, params):
        self._write({"jsonrpc": "2.0", "method": method, "params": params})

    def wait(self, pred, timeout=30):
        settings = {"validate": True, "completion": True, "hover": True, "schemaStore": {"enable": False}}
        end = time.time() + timeout
        while time.time() < end:
            try:
                m = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            if m.get("method") == "workspace/configuration":
                self._write({"jsonrpc": "2.0", "id": m["id"], "result": [settings] * len(m["params"]["items"])})
            elif "id" in m and "method" in m:
                self._write({"jsonrpc": "2.0", "id": m["id"], "result": None})
            elif pred(m):
                return m
        sys.exit("timed out waiting for yaml-language-server")

    def open(self, path):
        self.notify("textDocument/didOpen", {"textDocument": {"uri": path.as_uri(), "languageId": "yaml", "version": 1, "text": path.read_text()}})
        m = self.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics" and m["params"]["uri"] == path.as_uri())
        return m["params"]["diagnostics"]


def expect(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        sys.exit(1)


def main():
    s = Server(sys.argv[1] if len(sys.argv) > 1 else "yaml-language-server")
    s.request("initialize", {"processId": os.getpid(), "rootUri": REPO.as_uri(), "capabilities": {"workspace": {"configuration": True}, "textDocument": {"hover": {"contentFormat": ["markdown"]}}}})
    s.notify("initialized", {})
    s.notify("workspace/didChangeConfiguration", {"settings": {"yaml": {"validate": True, "completion": True, "hover": True, "schemaStore": {"enable": False}}}})
    for name in ["base.yaml", "iphone-3gb.yaml", "iphone-4gb.yaml", "release.yaml"]:
        d = s.open(REPO / "manifests" / name)
        expect(d == [], f"manifests/{name}: no diagnostics ({[x['message'] for x in d]})")
    d = s.open(REPO / "manifests/errors/unknown-key-component.yaml")
    expect([(x["range"]["start"]["line"] + 1, x["range"]["start"]["character"] + 1) for x in d] == [(15, 5)], f"unknown key reported at 15:5 ({d})")
    base = REPO / "manifests/base.yaml"
    lines = base.read_text().splitlines()
    ln = next(i for i, l in enumerate(lines) if "role: text_decode_step" in l)
    r = s.request("textDocument/completion", {"textDocument": {"uri": base.as_uri()}, "position": {"line": ln, "character": lines[ln].index("role: ") + 6}})
    items = r["items"] if isinstance(r, dict) else r
    labels = {it["label"]: it.get("documentation") for it in items}
    expect(set(labels) >= {"text_decode_step", "image_decoder", "video_decoder", "data"}, f"role completion offers the four roles ({sorted(labels)})")
    expect(all(labels[k] for k in ["image_decoder", "data"]), "completed roles carry their descriptions")
    ln = next(i for i, l in enumerate(lines) if "max_seq_len:" in l)
    h = s.request("textDocument/hover", {"textDocument": {"uri": base.as_uri()}, "position": {"line": ln, "character": lines[ln].index("max_seq_len") + 2}})
    expect(h is not None and "context" in json.dumps(h), "hover on max_seq_len shows its description")
    s.p.kill()


main()
