#!/usr/bin/env python3
"""Samples through llama.cpp's OpenAI-compatible server (llama-cpp-python's `llama_cpp.server`)
with the `openai` sampler, as a user with a GGUF and llama.cpp would: the SmolLM2 GGUF served on
loopback, a tiny recipe (4 prompts x n = 3, 24 new tokens, temperature 0.7, top_p 0.95,
min_p 0.05, repetition_penalty 1.0), `sweetspot generate --recipe`. Prints what worked, the
sample count, and what llama-cpp-python's server does with what sweetspot sends. The result is
recorded in docs/scale-out.md.

    pip install 'llama-cpp-python[server]'   # builds llama.cpp from source where no wheel fits
    cargo build --release
    python3 scripts/llamacpp_server_check.py [--n-batch 1]

The server is llama-cpp-python's, not llama.cpp's own `llama-server` (C++), which takes token-id
prompts and `n`; this one takes text prompts only and ignores `n` (one choice per request).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF = os.environ.get("SWEETSPOT_GGUF") or os.path.join(
    ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
BIN = os.path.join(ROOT, "target", "release", "sweetspot")
PROMPTS = ["What is the capital of France?", "Name a color.", "Say hello.", "Count to three."]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url, proc, seconds=120):
    t = time.time()
    while time.time() - t < seconds:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                return json.load(r)
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not come up")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-batch", type=int, default=None,
                    help="llama_cpp.server --n_batch (1 works around some CPU builds)")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", GGUF, "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2"]
    if args.n_batch:
        cmd += ["--n_batch", str(args.n_batch)]
    with tempfile.TemporaryDirectory() as tmp:
        log = open(os.path.join(tmp, "server.log"), "w")
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            models = wait_up(url, server)
            print("server up:", [m["id"] for m in models["data"]])
            with open(os.path.join(tmp, "prompts.jsonl"), "w") as f:
                for p in PROMPTS:
                    f.write(json.dumps({"prompt": p}) + "\n")

            def recipe(name, extra):
                path = os.path.join(tmp, f"{name}.toml")
                with open(path, "w") as f:
                    f.write(f"""[run]
name = "{name}"
seed = 5

[sampler]
type = "openai"
endpoints = [{{ url = "{url}", concurrency = 1 }}]
model = "smollm2"
tokenizer = "{GGUF}"
max_new_tokens = 24
temperature = 0.7
top_p = 0.95
min_p = 0.05
repetition_penalty = 1.0
max_retries = 1
timeout_s = 120
{extra}

[generate]
prompts = "prompts.jsonl"
n = 3
""")
                return path

            def generate(name, extra):
                out = os.path.join(tmp, f"{name}.jsonl")
                r = subprocess.run([BIN, "-q", "generate", "--recipe", recipe(name, extra),
                                    "-o", out], capture_output=True, text=True, cwd=tmp)
                rows = []
                if r.returncode == 0:
                    with open(out) as f:
                        rows = [json.loads(line) for line in f]
                return r, rows

            results = {}
            # 1. The defaults: prompt_format auto, all of a prompt's samples in one request.
            r, rows = generate("defaults", "")
            results["defaults"] = (r.returncode, len(rows), (r.stderr or r.stdout).strip()[-400:])
            # 2. One sample per request (the server ignores n).
            r, rows = generate("per1", "samples_per_request = 1")
            results["samples_per_request = 1"] = (r.returncode, len(rows),
                                                  (r.stderr or "").strip()[-400:])
            if rows:
                print("a sample:", json.dumps(rows[0])[:300])
                distinct = len({(x["prompt_id"], x["response"]) for x in rows})
                print(f"distinct responses: {distinct} of {len(rows)}")
            # 3. Token ids forced: the message says what to set.
            r, _ = generate("tokens", "samples_per_request = 1\nprompt_format = \"tokens\"")
            results["prompt_format = tokens"] = (r.returncode, 0, (r.stderr or "").strip()[-400:])
            for k, (rc, n, msg) in results.items():
                print(f"--- {k}: exit {rc}, {n} samples\n{msg}")
        finally:
            server.terminate()
            server.wait(30)
            log.close()


if __name__ == "__main__":
    main()
