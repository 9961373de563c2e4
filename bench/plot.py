"""Plots bench/results/results.json (written by `make bench`) as a PNG bar chart: every
variant of each scenario, in the order the bench ran them."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

data = json.load(open(sys.argv[1]))


def colour(name):
    if "flowguard native" in name:
        return "#2471a3"
    return "#c0392b" if "flowguard" in name else "#888"


scenarios = list(dict.fromkeys(r["scenario"] for r in data["rows"]))
most = max(sum(r["scenario"] == s for r in data["rows"]) for s in scenarios)
fig, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 1.2 + 0.5 * most), squeeze=False)
axes = axes[0]
for ax, scenario in zip(axes, scenarios):
    rows = [r for r in data["rows"] if r["scenario"] == scenario]
    names = [r["variant"] for r in rows]
    ratios = [r["ratio"] for r in rows]
    bars = ax.barh(names, ratios, color=[colour(n) for n in names])
    for b, r in zip(bars, rows):
        ax.text(b.get_width() + 0.01, b.get_y() + b.get_height() / 2,
                f"{r['rps']:.0f} rps, p99 {r['p99_us']:.0f} µs", va="center", fontsize=8)
    ax.axvline(0.8, color="#c0392b", linestyle="--", linewidth=1)
    ax.set_xlim(0, max(1.35, max(ratios) + 0.4))
    ax.invert_yaxis()
    ax.set_title(f"{scenario}: throughput relative to Envoy without a filter")
fig.suptitle(f"flowguard on Envoy 1.40, --concurrency 1, wrk -c{data['connections']} (commit {data['commit']})")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
