"""Streaming load against OpenAI-compatible servers: Ember's `ember serve` and llama.cpp's
`llama-server -np 16`, the same model, threads and requests, one after the other in one run.

At 1, 4 and 16 concurrent clients, each client sends chat requests back to back (streaming,
greedy, 128 generated tokens each with end-of-text ignored) until the level's requests are done.
Reported per server and level: aggregate generated tokens per second (all tokens / wall time)
and time to first token (p50, p95). Prints a Markdown table with Ember / llama.cpp ratios.

Usage: bench/serve-load.py [--threads 2] [--tokens 128] [--levels 1,4,16] [--requests-per-client 2]
(bench/serve-load.sh builds what is missing and runs this with the project's Python.)
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
TOPICS = ["the ocean", "volcanoes", "bread", "bicycles", "the moon", "libraries", "rain", "chess", "honey bees",
          "lighthouses", "trains", "glaciers", "owls", "tea", "bridges", "deserts"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(command, port):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"{command[0]} exited: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)
    raise SystemExit(f"{command[0]} did not become ready")


def one_request(base, model, index, tokens):
    body = {"model": model, "stream": True, "temperature": 0, "max_tokens": tokens, "ignore_eos": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Write a long essay about {TOPICS[index % len(TOPICS)]}."}]}
    start = time.perf_counter()
    first = None
    generated = 0
    counted = None
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                counted = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if (choice.get("delta") or {}).get("content"):
                    generated += 1
                    if first is None:
                        first = time.perf_counter() - start
    return first if first is not None else time.perf_counter() - start, counted if counted is not None else generated


def level(base, model, clients, per_client, tokens):
    results, lock = [], threading.Lock()

    def client(c):
        for k in range(per_client):
            ttft, n = one_request(base, model, c * per_client + k, tokens)
            with lock:
                results.append((ttft, n))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttfts = sorted(r[0] for r in results)
    p95 = ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))]
    return {"tokens_per_s": sum(r[1] for r in results) / wall, "ttft_p50": statistics.median(ttfts), "ttft_p95": p95,
            "requests": len(results), "tokens": sum(r[1] for r in results)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--llama-server", default=os.path.join(ROOT, ".cache/llama.cpp/build/bin/llama-server"))
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    servers = {
        "Ember": lambda port: [os.path.join(ROOT, ".build/release/ember"), "serve", "--model", MODEL, "--port", str(port),
                               "--threads", str(args.threads), "--max-num-seqs", "16", "--served-model-name", "model"],
        "llama.cpp": lambda port: [args.llama_server, "-m", MODEL, "--port", str(port), "-t", str(args.threads), "-tb", str(args.threads),
                                   "-np", "16", "-c", str(16 * 1024), "--log-disable"],
    }
    table = {}
    for name, command in servers.items():
        port = free_port()
        process = start(command(port), port)
        try:
            base = f"http://127.0.0.1:{port}"
            one_request(base, "model", 0, 8)  # warm up
            for clients in levels:
                table[(name, clients)] = result = level(base, "model", clients, args.requests_per_client, args.tokens)
                print(f"{name} {clients} clients: {json.dumps(result)}", file=sys.stderr)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    print(f"| clients | llama.cpp tokens/s | Ember tokens/s | Ember / llama.cpp | llama.cpp TTFT p50 / p95 (s) | Ember TTFT p50 / p95 (s) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for clients in levels:
        e, l = table[("Ember", clients)], table[("llama.cpp", clients)]
        print(f"| {clients} | {l['tokens_per_s']:.1f} | {e['tokens_per_s']:.1f} | {e['tokens_per_s'] / l['tokens_per_s']:.2f} | "
              f"{l['ttft_p50']:.2f} / {l['ttft_p95']:.2f} | {e['ttft_p50']:.2f} / {e['ttft_p95']:.2f} |")


if __name__ == "__main__":
    main()
