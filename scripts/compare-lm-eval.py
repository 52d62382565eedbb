#!/usr/bin/env python3
"""Compares the runs of scripts/compare-lm-eval.sh: for each task, every metric from
lm-evaluation-harness and from `ember eval` (with its stderr), the largest per-choice difference of
log-likelihoods and the items whose chosen answer differs (multiple choice), the outputs that
differ (generation), and items per second of each with the ratio. Prints Markdown.
Usage: compare-lm-eval.py RUNS_DIR"""
import glob
import json
import os
import sys

runs = sys.argv[1]


def harness(kind, task):
    """(metrics, samples by doc_id) of an lm_eval run (kind: lm_eval or served)."""
    folder = os.path.join(runs, f"{kind}-{task}")
    results = sorted(glob.glob(f"{folder}/**/results_*.json", recursive=True, include_hidden=True))
    samples = sorted(glob.glob(f"{folder}/**/samples_ember_{task}_*.jsonl", recursive=True, include_hidden=True))
    if not results or not samples:
        return None, None
    metrics = json.load(open(results[-1]))["results"][f"ember_{task}"]
    items = {s["doc_id"]: s for s in map(json.loads, open(samples[-1]))}
    return metrics, items


def ember(name):
    folder = os.path.join(runs, f"ember-{name}")
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        return None, None
    results = json.load(open(path))["results"]
    task = next(iter(results))
    items = {s["doc_id"]: s for s in map(json.loads, open(os.path.join(folder, f"samples-{task}.jsonl")))}
    return results[task], items


timings = {}
for line in open(os.path.join(runs, "timings.txt")):
    who, name, items, seconds = line.split()
    timings[(who, name)] = (int(items), float(seconds))


def number(value):
    """A metric as 0.0000 (the harness writes "N/A" for the stderr of a single item)."""
    return f"{value:.4f}" if isinstance(value, (int, float)) else str(value)


def rate(who, name, count):
    if (who, name) not in timings:
        return None
    return count / timings[(who, name)][1]


print("| task | metric | lm-evaluation-harness (hf) | ember eval | lm_eval local-completions → ember serve |")
print("| --- | --- | ---: | ---: | ---: |")
details = []
for task, ember_name, kind in [("logiqa", "logiqa", "mc"), ("reclor", "reclor", "mc"), ("gsm_symbolic", "gsm_symbolic", "gen")]:
    ours, our_items = ember(ember_name)
    theirs, their_items = harness("lm_eval", task)
    served, served_items = harness("served", task)
    if ours is None or theirs is None:
        continue
    names = ["acc", "acc_norm"] if kind == "mc" else ["exact_match"]
    for metric in names:
        key = f"{metric},none" if kind == "mc" else f"{metric},flexible-extract"
        h = f"{number(theirs[key])} ± {number(theirs[key.replace(',', '_stderr,')])}"
        e = f"{number(ours[metric])} ± {number(ours[metric + '_stderr'])}"
        s = f"{number(served[key])} ± {number(served[key.replace(',', '_stderr,')])}" if served else "-"
        print(f"| {task} | {metric} | {h} | {e} | {s} |")
    n = len(our_items)
    if kind == "mc":
        worst, relative, differ, total = 0.0, 0.0, 0, 0
        for doc_id, item in our_items.items():
            ref = [float(r[0]) for r in their_items[doc_id]["filtered_resps"]]
            for a, b in zip(item["logprobs"], ref):
                worst = max(worst, abs(a - b))
                relative = max(relative, abs(a - b) / max(abs(b), 1e-9))
                total += 1
            ours_choice = max(range(len(ref)), key=lambda i: item["logprobs"][i])
            their_choice = max(range(len(ref)), key=lambda i: ref[i])
            differ += ours_choice != their_choice
        served_differ = ""
        if served_items:
            sw = max(abs(float(a[0]) - float(b[0])) for d in our_items for a, b in zip(served_items[d]["filtered_resps"], their_items[d]["filtered_resps"]))
            sd = sum(max(range(4), key=lambda i: float(served_items[d]["filtered_resps"][i][0])) != max(range(4), key=lambda i: our_items[d]["logprobs"][i]) for d in our_items)
            served_differ = f"; ember serve via local-completions vs the hf backend: max |Δ| {sw:.4f}, {sd} items choose differently from ember eval"
        details.append(f"- {task}: {n} items, {total} choices: max |Δ log-likelihood| {worst:.4f} (relative {relative:.2e}); "
                       f"{differ} items choose a different answer{served_differ}")
        r_h, r_e, r_s = rate("lm_eval", task, n), rate("ember", ember_name, n), rate("ember", ember_name + "-separate", n)
        if r_h and r_e:
            details.append(f"  - items/s: lm_eval hf {r_h:.2f}, ember eval {r_e:.2f} ({r_e / r_h:.1f}×), "
                           f"ember eval --no-shared-context {r_s:.2f} ({r_s / r_h:.1f}×): the shared context gives {r_e / r_s:.2f}×")
    else:
        same = sum(our_items[d]["output"] == their_items[d]["resps"][0][0] for d in our_items)
        answers = sum(our_items[d]["answer"] == their_items[d]["filtered_resps"][0] for d in our_items)
        served_same = ""
        if served_items:
            outputs = sum(served_items[d]["resps"][0][0] == our_items[d]["output"] for d in our_items)
            served_same = f"; through ember serve via local-completions, {outputs} outputs identical to ember eval's"
        details.append(f"- {task}: {n} items, {same} outputs identical to the harness's, {answers} extracted answers identical{served_same}")
        r_h, r_e = rate("lm_eval", task, n), rate("ember", ember_name, n)
        if r_h and r_e:
            details.append(f"  - items/s: lm_eval hf {r_h:.3f}, ember eval {r_e:.3f} ({r_e / r_h:.1f}×)")
print()
print("\n".join(details))
