"""Sums the fuzz campaign's runs (.cache/fuzz/summary.txt, one line per harness run of scripts/fuzz.sh)
into a Markdown table: CPU time, executions, coverage (edges and features, the largest a run
reached), corpus size, and runs that ended in a finding.
Usage: python3 scripts/fuzz-report.py [.cache/fuzz/summary.txt]
"""
import re
import sys

path = sys.argv[1] if len(sys.argv) > 1 else ".cache/fuzz/summary.txt"
order = ["gguf", "safetensors", "tokenizer-json", "sentencepiece", "jinja", "requests", "jsonl", "adapter", "checkpoint", "dequantize"]
rows = {h: {"cpu": 0, "runs": 0, "execs": 0, "cov": 0, "ft": 0, "corpus": 0, "findings": 0} for h in order}
for line in open(path):
    m = re.match(r"\S+ (\S+) seconds=(\d+) jobs=(\d+)(?: cpu=(\d+))? status=(\d+) findings=(\d+) last: #(\d+)\S*\s+(?:\S+\s+)?cov: (\d+) ft: (\d+) corp: (\d+)", line)
    if not m:
        continue
    h, seconds, jobs, cpu, status, found, execs, cov, ft, corpus = m.groups()
    row = rows.setdefault(h, {"cpu": 0, "runs": 0, "execs": 0, "cov": 0, "ft": 0, "corpus": 0, "findings": 0})
    # Runs before the cpu field counted wall time on every job, on an otherwise idle machine.
    row["cpu"] += int(cpu) if cpu else int(seconds) * int(jobs)
    row["runs"] += 1
    row["execs"] += int(execs)
    row["cov"] = max(row["cov"], int(cov))
    row["ft"] = max(row["ft"], int(ft))
    row["corpus"] = max(row["corpus"], int(corpus))
    row["findings"] += int(int(found) > 0 or int(status) != 0)
print("| harness | CPU time | executions | edges | features | corpus | runs | runs with a finding |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
total = 0
for h, r in rows.items():
    total += r["cpu"]
    print(f"| {h} | {r['cpu'] / 3600:.2f} h | {r['execs']:,} | {r['cov']:,} | {r['ft']:,} | {r['corpus']:,} | {r['runs']} | {r['findings']} |")
print(f"\nTotal: {total / 3600:.2f} CPU-hours.")
