"""Draws the loss curves of several `ember pretrain` runs in one SVG: each run's training loss (a
moving average over 20 steps, thin) and validation loss (points joined, thick), in its own colour.
Prints each run's last validation loss and its relative difference from the first run's.
Usage: python3 scripts/plot-runs.py OUT.svg LABEL=RUN/log.jsonl [LABEL=RUN/log.jsonl ...]
"""
import json
import sys

if len(sys.argv) < 3 or any("=" not in a for a in sys.argv[2:]):
    sys.exit(__doc__)
out, runs = sys.argv[1], []
for argument in sys.argv[2:]:
    label, path = argument.split("=", 1)
    lines = [json.loads(line) for line in open(path) if line.strip()]
    training = [(r["step"], r["loss"]) for r in lines if "loss" in r]
    validation = [(r["step"], r["val_loss"]) for r in lines if "val_loss" in r]
    if not validation:
        sys.exit(f"{path}: no validation loss (run with --eval-every)")
    window, smooth = 20, []
    for i in range(len(training)):
        part = training[max(0, i - window + 1): i + 1]
        smooth.append((training[i][0], sum(v for _, v in part) / len(part)))
    runs.append((label, smooth, validation))

width, height, left, right, top, bottom = 760, 440, 64, 24, 40, 44
values = [v for _, t, val in runs for _, v in t + val]
low, high = min(values), max(values)
last = max(s for _, t, val in runs for s, _ in t + val)
def x(step): return left + step / last * (width - left - right)
def y(value): return top + (high - value) / (high - low) * (height - top - bottom)
colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
       '<rect width="100%" height="100%" fill="white"/>',
       f'<text x="{left}" y="18">loss per step: training (20-step mean, thin) and validation (points, thick)</text>',
       f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
       f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>']
for k in range(5):
    value, step = low + (high - low) * k / 4, round(last * k / 4)
    svg.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.2f}</text>')
    svg.append(f'<text x="{x(step):.1f}" y="{height - bottom + 16}" text-anchor="middle">{step}</text>')
svg.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 8}" text-anchor="middle">step</text>')
for i, (label, training, validation) in enumerate(runs):
    colour = colours[i % len(colours)]
    points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in training)
    svg.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1" stroke-opacity="0.6" points="{points}"/>')
    points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in validation)
    svg.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
    svg += [f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>' for s, v in validation]
    svg.append(f'<text x="{width - right - 220}" y="{top + 16 * (i + 1)}" fill="{colour}">{label}: validation {validation[-1][1]:.4f} at step {validation[-1][0]}</text>')
svg.append("</svg>")
open(out, "w").write("\n".join(svg) + "\n")
first = runs[0][2][-1][1]
for label, _, validation in runs:
    step, value = validation[-1]
    print(f"{label}: validation loss {value:.4f} at step {step}, {100 * (value - first) / first:+.2f}% against {runs[0][0]}")
print(f"wrote {out}")
