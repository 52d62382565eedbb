#!/usr/bin/env python3
"""Measures single-line infill exact match of a running completion server on held-out FIM items
(from scripts/fetch-fim-data.py).

Modes:
  infill  POST URL/infill (llama-server's API) with input_prefix / input_suffix; completion = "content"
  suffix  POST URL/v1/completions with prompt = prefix and suffix; completion = choices[0].text
  prefix  POST URL/v1/completions with the prefix only (left-to-right baseline ignoring the suffix)

Greedy decoding. In the infill modes generation stops at the first newline and the prediction is the
completion up to it, stripped. The prefix mode sends the prefix without its final newline, which a
BPE vocabulary would otherwise split from the next line's indentation as the model never saw it, and
generates up to --max-tokens; the prediction is the first non-blank line after the completion's
first newline, stripped. A prediction matches when it equals the stripped middle. Prints the exact
match with its standard error and the request rate; --out writes one JSON line per item, --agree
compares the predictions with another --out file of the same items.

Usage: python3 scripts/fim-eval.py --url http://127.0.0.1:8080 --data .cache/fim/heldout.jsonl
         [--mode infill|suffix|prefix] [--limit N] [--max-tokens 48] [--out results.jsonl]
         [--agree OTHER_results.jsonl] [--model NAME]
"""
import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        fail(f"POST {url}: HTTP {e.code} {e.reason}\n{e.read().decode(errors='replace')}")
    except urllib.error.URLError as e:
        fail(f"POST {url}: cannot reach the server ({e.reason})")
    except (TimeoutError, OSError) as e:
        fail(f"POST {url}: {e}")
    except json.JSONDecodeError as e:
        fail(f"POST {url}: response is not JSON ({e})")


def predict(args, item):
    """The server's line for the item's middle, as the docstring describes for each mode."""
    if args.mode == "infill":
        body = {"input_prefix": item["prefix"], "input_suffix": item["suffix"], "input_extra": [], "prompt": "",
                "n_predict": args.max_tokens, "temperature": 0, "top_k": 1, "stop": ["\n"], "cache_prompt": True}
        url = f"{args.url}/infill"
    else:
        if args.mode == "suffix":
            body = {"prompt": item["prefix"], "suffix": item["suffix"], "max_tokens": args.max_tokens, "temperature": 0, "stop": ["\n"]}
        else:
            prompt = item["prefix"][:-1] if item["prefix"].endswith("\n") else item["prefix"]
            body = {"prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0}
        if args.model:
            body["model"] = args.model
        url = f"{args.url}/v1/completions"
    response = post(url, body)
    try:
        completion = response["content"] if args.mode == "infill" else response["choices"][0]["text"]
    except (KeyError, IndexError, TypeError):
        fail(f"POST {url}: unexpected response {json.dumps(response)[:500]}")
    if args.mode != "prefix":
        return completion.split("\n", 1)[0].strip()
    following = completion.split("\n", 1)[1] if "\n" in completion else ""
    return next((line.strip() for line in following.split("\n") if line.strip()), "")


def read_jsonl(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        fail(f"cannot read {path}: {e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--data", required=True, help="held-out items, e.g. .cache/fim/heldout.jsonl")
    parser.add_argument("--mode", choices=["infill", "suffix", "prefix"], default="infill")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", help="write per-item results (JSON lines) here")
    parser.add_argument("--agree", help="compare predictions with this other --out file")
    parser.add_argument("--model", help='"model" field for /v1/completions')
    args = parser.parse_args()
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be positive")
    if args.max_tokens < 1:
        parser.error("--max-tokens must be positive")
    args.url = args.url.rstrip("/")

    items = read_jsonl(args.data)[:args.limit]
    if not items:
        fail(f"no items in {args.data}")
    other = {r["index"]: r["prediction"] for r in read_jsonl(args.agree)} if args.agree else None

    results, start = [], time.monotonic()
    for index, item in enumerate(items):
        prediction = predict(args, item)
        source = {k: item[k] for k in ("module", "function", "task_id") if k in item}
        results.append({"index": index, **source, "middle": item["middle"], "prediction": prediction,
                        "match": prediction == item["middle"].strip()})
        if (index + 1) % 25 == 0:
            hits = sum(r["match"] for r in results)
            print(f"{index + 1}/{len(items)}: {hits} exact", file=sys.stderr)
    elapsed = time.monotonic() - start

    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in results)

    n, k = len(results), sum(r["match"] for r in results)
    p = k / n
    stderr = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")
    print(f"exact match: {k}/{n} = {p:.4f} (stderr {stderr:.4f})")
    print(f"{n / elapsed:.2f} requests/s ({elapsed:.1f} s, mode {args.mode})")
    if other is not None:
        common = [r for r in results if r["index"] in other]
        same = sum(r["prediction"] == other[r["index"]] for r in common)
        missing = f" ({n - len(common)} items not in it)" if len(common) < n else ""
        print(f"agreement with {args.agree}: {same}/{len(common)} predictions identical{missing}")


if __name__ == "__main__":
    main()
