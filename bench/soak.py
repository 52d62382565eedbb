"""Soak test for `ember serve`: mixed load for a while, then checks that nothing leaked.

Eight client threads send, at random: streaming and non-streaming chat and completion requests
(some with n > 1, stop strings, logprobs), streams that the client drops after a few chunks, and
malformed requests (broken JSON, wrong field types, oversized bodies, prompts past the context).
Checks, and prints:
  - no 5xx response and no connection failure (only the expected 4xx for the malformed ones);
  - the server still answers /health at the end;
  - resident memory (VmRSS) sampled every 10 s is flat after warm-up (last minute vs first minute
    after the first 60 s);
  - after the load, /metrics shows no running or waiting request and KV-cache usage 0: every
    block is back in the pool.
Usage: bench/soak.py [--seconds 600] [--threads 2]   (exit status 1 when a check fails)
"""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def metric(base, name):
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([os.path.join(ROOT, ".build/release/ember"), "serve", "--model", MODEL, "--port", str(port),
                               "--threads", str(args.threads), "--max-model-len", "1024", "--max-tokens-limit", "256",
                               "--kv-cache-memory", "256MiB", "--served-model-name", "m"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(200):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    counts, failures, lock = {}, [], threading.Lock()
    stop_at = time.time() + args.seconds

    def record(kind, status):
        with lock:
            counts[(kind, status)] = counts.get((kind, status), 0) + 1

    def worker(seed):
        rng = random.Random(seed)
        client = httpx.Client(base_url=base, timeout=120)
        while time.time() < stop_at:
            kind = rng.choice(["chat", "chat", "stream", "stream", "completion", "drop", "drop", "bad_json", "bad_type",
                               "too_long", "oversize", "n3"])
            messages = [{"role": "user", "content": f"Tell me about topic {rng.randint(0, 50)}." * rng.randint(1, 4)}]
            try:
                if kind in ("chat", "n3"):
                    r = client.post("/v1/chat/completions", json={"model": "m", "messages": messages, "max_tokens": rng.randint(1, 64),
                                                                   "temperature": rng.choice([0, 0.7, 1.2]), "n": 3 if kind == "n3" else 1,
                                                                   "stop": rng.choice([[], ["."], ["the", "\n"]]), "logprobs": rng.random() < 0.3})
                    status = r.status_code
                elif kind == "completion":
                    status = client.post("/v1/completions", json={"model": "m", "prompt": "Once upon a time", "max_tokens": rng.randint(1, 48),
                                                                   "logprobs": rng.choice([None, 2])}).status_code
                elif kind in ("stream", "drop"):
                    with client.stream("POST", "/v1/chat/completions", json={"model": "m", "messages": messages, "stream": True,
                                                                            "max_tokens": rng.randint(8, 128)}) as r:
                        status = r.status_code
                        for i, _ in enumerate(r.iter_lines()):
                            if kind == "drop" and i >= rng.randint(1, 6):
                                break
                elif kind == "bad_json":
                    status = client.post("/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"}).status_code
                elif kind == "bad_type":
                    status = client.post("/v1/chat/completions", json={"messages": messages, rng.choice(["temperature", "max_tokens", "n", "stop"]): {"x": 1}}).status_code
                elif kind == "too_long":
                    status = client.post("/v1/completions", json={"prompt": "word " * 2000, "max_tokens": 4}).status_code
                else:
                    status = client.post("/v1/completions", content=b"x" * (5 << 20)).status_code
                record(kind, status)
                expected_4xx = kind in ("bad_json", "bad_type", "too_long", "oversize")
                if status >= 500 or (expected_4xx and not 400 <= status < 500) or (not expected_4xx and status != 200):
                    with lock:
                        failures.append(f"{kind}: HTTP {status}")
            except httpx.HTTPError as error:
                with lock:
                    failures.append(f"{kind}: {type(error).__name__}: {error}")

    rss = []
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    start = time.time()
    while any(t.is_alive() for t in threads):
        if server.poll() is not None:
            failures.append("the server exited")
            break
        rss.append((time.time() - start, rss_kib(server.pid)))
        time.sleep(10)
    for t in threads:
        t.join()
    time.sleep(2)
    alive = server.poll() is None
    running = waiting = usage = None
    if alive:
        running, waiting, usage = (metric(base, n) for n in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"])
    warm = [k for t, k in rss if 60 <= t < 120]
    last = [k for t, k in rss if t >= max(120, args.seconds - 60)]
    growth = (sum(last) / len(last)) / (sum(warm) / len(warm)) - 1 if warm and last else 0
    print("requests:", json.dumps({f"{k} {s}": v for (k, s), v in sorted(counts.items())}, indent=1))
    print(f"resident memory (MiB) every 10 s: {[round(k / 1024) for _, k in rss]}")
    print(f"growth from minute 2 to the last minute: {growth * 100:.1f}%")
    print(f"after the load: running {running}, waiting {waiting}, KV-cache usage {usage}; server alive: {alive}")
    ok = alive and not failures and running == 0 and waiting == 0 and usage == 0 and growth < 0.05
    if failures:
        print("failures:", failures[:20])
    print("PASS" if ok else "FAIL")
    if alive:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
