"""Plots bench/results/results.json (written by `make bench`) as a PNG bar chart."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

data = json.load(open(sys.argv[1]))
fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
for ax, scenario in zip(axes, ["direct", "proxied"]):
    rows = [r for r in data["rows"] if r["scenario"] == scenario]
    names = [r["variant"] for r in rows]
    ratios = [r["ratio"] for r in rows]
    bars = ax.barh(names, ratios, color=["#888" if "flowguard" not in n else "#c0392b" for n in names])
    for b, r in zip(bars, rows):
        ax.text(b.get_width() + 0.01, b.get_y() + b.get_height() / 2,
                f"{r['rps']:.0f} rps, p99 {r['p99_us']:.0f} µs", va="center", fontsize=8)
    ax.axvline(0.8, color="#c0392b", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1.35)
    ax.invert_yaxis()
    ax.set_title(f"{scenario}: throughput relative to Envoy without Wasm")
fig.suptitle(f"flowguard on Envoy 1.40, --concurrency 1, wrk -c{data['connections']} (commit {data['commit']})")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
