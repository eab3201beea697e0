"""The programs benchmark as a picture: throughput per system, hit rate against optimal.

Reads only the JSON data `bench_programs` writes (so a saved result can be re-plotted:
`python benchmarks/plot_programs.py benchmarks/results/programs.json`). Knows nothing of how
the numbers were measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLOURS = {"lmnb": "#d95f02", "lmnb-nocache": "#7570b3", "transformers": "#1b9e77"}


def plot(data: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["workloads"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    _throughput(top, data, names)
    _hit_rates(bottom, data, names)
    bottom.set_xticks(range(len(names)), names, rotation=25, ha="right")
    m = data.get("machine", {})
    fig.suptitle(f"LM programs on {m.get('model', '?')} ({m.get('dtype', '?')}, "
                 f"{m.get('cpu_cores', '?')}-core {m.get('cpu_model', 'CPU')})"
                 + (" - quick sizes" if data.get("quick") else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _throughput(ax: Any, data: dict[str, Any], names: list[str]) -> None:
    """Programs/s per system (log scale), with lmnb's speedup over each baseline on top."""
    systems = [s for s in COLOURS if any(s in data["workloads"][n]["systems"] for n in names)]
    width = 0.8 / len(systems)
    for j, system in enumerate(systems):
        xs, ys = [], []
        for i, name in enumerate(names):
            run = data["workloads"][name]["systems"].get(system)
            if run:
                xs.append(i + (j - (len(systems) - 1) / 2) * width)
                ys.append(run["programs_per_s"])
        n = data["hf_sample"]
        label = system + (f" (first {n} program{'s' if n > 1 else ''})"
                          if system == "transformers" else "")
        ax.bar(xs, ys, width, label=label, color=COLOURS[system])
    for i, name in enumerate(names):
        w = data["workloads"][name]
        parts = [f"{w[k]:.1f}x" for k in ("speedup_vs_nocache", "speedup_vs_transformers")
                 if w.get(k)]
        top = w["systems"]["lmnb"]["programs_per_s"]
        ax.annotate(" / ".join(parts), (i, top), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=7)
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 4)  # room for the legend above the bars
    ax.set_ylabel("programs / s (log)")
    ax.set_title("throughput; labels: lmnb speedup vs no cache / vs transformers", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", ncol=3)


def _hit_rates(ax: Any, data: dict[str, Any], names: list[str]) -> None:
    achieved = [data["workloads"][n]["systems"]["lmnb"]["hit_rate"] for n in names]
    optimal = [data["workloads"][n]["optimal_hit_rate"] for n in names]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], achieved, 0.4, label="achieved (lmnb)",
           color=COLOURS["lmnb"])
    ax.bar([x + 0.2 for x in xs], optimal, 0.4, label="optimal", color="#999999")
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("prompt hit rate")
    ax.legend(fontsize=8, loc="upper center", ncol=2)


if __name__ == "__main__":
    source = Path(sys.argv[1])
    print(plot(json.loads(source.read_text()), source.with_suffix(".png")))
