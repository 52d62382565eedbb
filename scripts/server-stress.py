"""Hostile load against a running `ember serve` (see scripts/server-stress.sh, which starts it).

overload  CLIENTS concurrent clients, each sending a few completions, chats and streams: every
          answer must be 200 or 429/503 in OpenAI's error shape with Retry-After; never another 5xx.
slow      500 idle connections and a client sending one byte a second, while other clients are
          served; their latencies are reported.
timeout   requests longer than --request-timeout (start the server with SERVER_ARGS="--request-timeout 2").
soak      SECONDS of chat, completions, streams dropped half-way, malformed bodies, adapter
          requests, embeddings and overload bursts together.

Each mode samples the servers' resident memory, then checks that the KV cache is free again
(/metrics) and /health answers 200. Prints a summary and exits non-zero on any failure.
"""
import argparse
import asyncio
import json
import os
import random
import socket
import sys
import time

import httpx


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Run:
    def __init__(self, args):
        self.args = args
        self.statuses = {}
        self.failures = []
        self.memory = []  # (seconds, {pid: MiB})
        self.started = time.time()

    def record(self, what, response):
        code = response.status_code
        self.statuses[code] = self.statuses.get(code, 0) + 1
        if code in (429, 503):
            try:
                error = response.json()["error"]
                assert isinstance(error["message"], str) and isinstance(error["type"], str)
            except Exception:
                self.failures.append(f"{what}: {code} without OpenAI's error shape: {response.text[:200]}")
            if "retry-after" not in response.headers:
                self.failures.append(f"{what}: {code} without Retry-After")
        elif code >= 500:
            self.failures.append(f"{what}: {code}: {response.text[:200]}")

    async def sample_memory(self, stop):
        pids = [p for p in self.args.pid if p]
        while not stop.is_set():
            self.memory.append((time.time() - self.started, {p: rss_mib(p) for p in pids}))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.args.sample)
            except asyncio.TimeoutError:
                pass


async def completion(client, run, i, base, model):
    kind = i % 3
    body = {"model": model, "max_tokens": 16, "temperature": 0.8, "seed": i}
    try:
        if kind == 0:
            body["prompt"] = f"Story {i}: once upon a time"
            r = await client.post(f"{base}/v1/completions", json=body)
        elif kind == 1:
            body["messages"] = [{"role": "user", "content": f"Say a word about the number {i}."}]
            r = await client.post(f"{base}/v1/chat/completions", json=body)
        else:
            body["messages"] = [{"role": "user", "content": f"Count to {i % 7 + 2}."}]
            body["stream"] = True
            async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
                if r.status_code == 200:
                    async for _ in r.aiter_lines():
                        pass
                else:
                    await r.aread()
        run.record(["completion", "chat", "stream"][kind], r)
    except httpx.HTTPError as e:
        run.failures.append(f"request {i}: {type(e).__name__}: {e}")


async def check_idle(run, base):
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(60):
            metrics = (await client.get(f"{base}/metrics")).text
            values = {}
            for line in metrics.splitlines():
                if line.startswith("vllm:"):
                    name = line.split("{")[0].split(" ")[0]
                    values[name] = float(line.rsplit(" ", 1)[1])
            if values.get("vllm:kv_cache_usage_perc", 1) == 0 and values.get("vllm:num_requests_running", 1) == 0 \
                    and values.get("vllm:num_requests_waiting", 1) == 0:
                break
            await asyncio.sleep(0.5)
        else:
            run.failures.append(f"the KV cache is not free after the load: {values}")
        health = await client.get(f"{base}/health")
        if health.status_code != 200:
            run.failures.append(f"/health answered {health.status_code} after the load")
        return values


async def overload(run, clients, rounds):
    base = run.args.url
    stop = asyncio.Event()
    sampler = asyncio.create_task(run.sample_memory(stop))
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def one(c):
            for k in range(rounds):
                await completion(client, run, c * rounds + k, base, run.args.model)
        await asyncio.gather(*(one(c) for c in range(clients)))
    stop.set()
    await sampler
    return await check_idle(run, base)


async def slow(run):
    base = run.args.url
    host, port = base.split("//")[1].split(":")
    port = int(port)
    idle = []
    for _ in range(500):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        idle.append(s)
    trickle_result = {}

    async def trickle():
        reader, writer = await asyncio.open_connection(host, port)
        request = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
        t0 = time.time()
        try:
            for b in request:
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(1)
            trickle_result["outcome"] = "sent its whole head"
        except (ConnectionError, OSError) as e:
            trickle_result["outcome"] = f"cut off after {time.time() - t0:.0f} s ({type(e).__name__})"
        writer.close()

    task = asyncio.create_task(trickle())
    stop = asyncio.Event()
    sampler = asyncio.create_task(run.sample_memory(stop))
    latencies = []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(run.args.requests):
            t0 = time.time()
            try:
                r = await client.post(f"{base}/v1/completions", json={"prompt": f"Hello {i}", "max_tokens": 8})
                run.record("completion beside slow clients", r)
                latencies.append(time.time() - t0)
            except httpx.HTTPError as e:
                run.failures.append(f"a client beside the slow ones failed: {e}")
            await asyncio.sleep(1)
    await task
    stop.set()
    await sampler
    for s in idle:
        s.close()
    await check_idle(run, base)
    latencies.sort()
    return {"idle connections": len(idle), "trickling client": trickle_result.get("outcome"),
            "served beside them": len(latencies),
            "latency median s": round(latencies[len(latencies) // 2], 3) if latencies else None,
            "latency max s": round(latencies[-1], 3) if latencies else None}


async def timeout(run):
    """Requests longer than the server's --request-timeout: a 503 in OpenAI's shape, or a stream
    that ends with that error; the KV cache free afterwards."""
    base = run.args.url
    body = {"model": run.args.model, "prompt": "Write a very long story.", "max_tokens": 256, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=120) as client:
        t0 = time.time()
        r = await client.post(f"{base}/v1/completions", json=body)
        whole = {"status": r.status_code, "seconds": round(time.time() - t0, 1), "code": r.json().get("error", {}).get("code")}
        run.record("a request over the timeout", r)
        if r.status_code != 503 or whole["code"] != "request_timeout":
            run.failures.append(f"a request over the timeout got {r.status_code}: {r.text[:200]}")
        events = []
        async with client.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        errors = [e for e in events if e.startswith('{"error"')]
        streamed = {"events": len(events), "error event": errors[0][:120] if errors else None, "last": events[-1] if events else None}
        if not errors or events[-1] != "[DONE]":
            run.failures.append(f"a stream over the timeout did not end with the error and [DONE]: {events[-3:]}")
    idle = await check_idle(run, base)
    return {"whole": whole, "stream": streamed, "kv cache after": idle.get("vllm:kv_cache_usage_perc")}


async def soak(run, seconds):
    base, stop_at = run.args.url, time.time() + seconds
    stop = asyncio.Event()
    sampler = asyncio.create_task(run.sample_memory(stop))
    counts = {}

    def count(name):
        counts[name] = counts.get(name, 0) + 1

    async def worker(w, client):
        i = 0
        while time.time() < stop_at:
            i += 1
            kind = (w + i) % 7
            try:
                if kind <= 2:
                    await completion(client, run, w * 100000 + i, base, run.args.model)
                    count("completions")
                elif kind == 3 and run.args.adapter:
                    await completion(client, run, w * 100000 + i, base, run.args.adapter)
                    count("adapter")
                elif kind == 4:
                    # A stream dropped after its first event.
                    body = {"model": run.args.model, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 200, "stream": True}
                    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
                        async for _ in r.aiter_lines():
                            break
                    count("dropped streams")
                elif kind == 5:
                    body = random.choice([b"{", b"\xff\xfe", b"[]", b'{"prompt": 5}', b'{"messages": "x"}', b'{"prompt": "a", "max_tokens": -3}',
                                          bytes(random.getrandbits(8) for _ in range(64))])
                    r = await client.post(f"{base}/v1/{random.choice(['completions', 'chat/completions'])}", content=body,
                                          headers={"content-type": "application/json"})
                    run.record("malformed", r)
                    if r.status_code != 400:
                        run.failures.append(f"a malformed body got {r.status_code}")
                    count("malformed")
                elif kind == 6 and run.args.embeddings:
                    r = await client.post(f"{run.args.embeddings}/v1/embeddings", json={"input": [f"sentence {i}", "another"]})
                    run.record("embeddings", r)
                    if r.status_code not in (200, 429):
                        run.failures.append(f"embeddings answered {r.status_code}: {r.text[:200]}")
                    count("embeddings")
            except httpx.HTTPError as e:
                run.failures.append(f"soak worker {w}: {type(e).__name__}: {e}")

    async def bursts(client):
        while time.time() < stop_at:
            await asyncio.sleep(60)
            await asyncio.gather(*(completion(client, run, 10**7 + k, base, run.args.model) for k in range(100)))
            count("overload bursts")

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*(worker(w, client) for w in range(run.args.workers)), bursts(client))
    stop.set()
    await sampler
    idle = await check_idle(run, base)
    return {"requests": counts, "idle metrics": idle}


def memory_report(run, flat_from):
    pids = [p for p in run.args.pid if p]
    report = {}
    for p in pids:
        series = [(t, m[p]) for t, m in run.memory if p in m]
        if not series:
            continue
        later = [v for t, v in series if t >= flat_from] or [v for _, v in series]
        at = later[0] if later else 0
        report[p] = {"start MiB": round(series[0][1], 1) if series else None, "peak MiB": round(max(v for _, v in series), 1) if series else None,
                     f"at {flat_from:.0f} s MiB": round(at, 1), "end MiB": round(series[-1][1], 1) if series else None,
                     "growth after that %": round(100 * (later[-1] - at) / at, 2) if at else None}
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["overload", "slow", "timeout", "soak"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--adapter", help="a --lora-modules name to send requests to (soak)")
    parser.add_argument("--embeddings", help="URL of an embedding server (soak)")
    parser.add_argument("--pid", type=int, action="append", default=[], help="server processes whose memory is sampled")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20, help="requests served beside the slow clients")
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between memory samples")
    parser.add_argument("--flat-from", type=float, default=300, help="memory must stay flat from this second on (soak)")
    parser.add_argument("--max-growth", type=float, default=5.0, help="percent of growth allowed after --flat-from")
    args = parser.parse_args()
    run = Run(args)
    t0 = time.time()
    if args.mode == "overload":
        details = asyncio.run(overload(run, args.clients, args.rounds))
    elif args.mode == "slow":
        details = asyncio.run(slow(run))
    elif args.mode == "timeout":
        details = asyncio.run(timeout(run))
    else:
        details = asyncio.run(soak(run, args.seconds))
    memory = memory_report(run, args.flat_from if args.mode == "soak" else 0)
    if args.mode == "soak":
        for pid, m in memory.items():
            if m["growth after that %"] is not None and m["growth after that %"] > args.max_growth:
                run.failures.append(f"process {pid}: resident memory grew {m['growth after that %']}% after {args.flat_from:.0f} s")
    summary = {"mode": args.mode, "seconds": round(time.time() - t0, 1), "statuses": run.statuses, "details": details,
               "memory": memory, "failures": run.failures[:20], "failure count": len(run.failures)}
    print(json.dumps(summary, indent=2, default=str))
    sys.exit(1 if run.failures else 0)


if __name__ == "__main__":
    main()
