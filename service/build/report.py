"""The comparison report: one Markdown table (mean ± std over seeds) and PNG plots a person would
rather look at than read: Recall@K curves per objective, training-loss curves, cross-view recall
per view type."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The headline metrics of the table, as paths into a build's manifest metrics.
TABLE_METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("R@10", ("recall@10",)),
    ("R@100", ("recall@100",)),
    ("nDCG@10", ("ndcg@10",)),
    ("R@100 title", ("title_answerable", "recall@100")),
    ("R@100 aux", ("auxiliary_only", "recall@100")),
    ("R@10 title", ("title_answerable", "recall@10")),
    ("R@10 aux", ("auxiliary_only", "recall@10")),
    ("xview R@10", ("cross_view", "mean", "recall@10")),
)


def lookup(metrics: dict[str, Any], path: Sequence[str]) -> float | None:
    cur: Any = metrics
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return float(cur) if isinstance(cur, int | float) else None


def summarise(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{objective: {metric label: (mean, std, n_seeds)}}; std is 0 for a single seed."""
    table: dict[str, dict[str, tuple[float, float, int]]] = {}
    for objective in dict.fromkeys(r["objective"] for r in results):
        runs = [r for r in results if r["objective"] == objective]
        row = {}
        for label, path in TABLE_METRICS + (("items/s", ("__items_per_s",)),):
            values = [r.get("items_per_s") if path == ("__items_per_s",) else lookup(r["metrics"], path) for r in runs]
            values = [v for v in values if v is not None]
            if values:
                row[label] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))
        table[objective] = row
    return table


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    table = summarise(results)
    labels = list(dict.fromkeys(label for row in table.values() for label in row))
    lines = ["| objective | seeds | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for objective, row in table.items():
        n = max((v[2] for v in row.values()), default=0)
        cells = []
        for label in labels:
            if label not in row:
                cells.append("–")
                continue
            mean, std, _ = row[label]
            cells.append(f"{mean:.0f} ± {std:.0f}" if label == "items/s" else f"{mean:.3f} ± {std:.3f}")
        lines.append(f"| {objective} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def modes_table(modes: dict[str, Any]) -> str:
    """`service eval`'s dense / lexical / hybrid metrics as one Markdown table."""
    cols = ("ndcg@10", "recall@10", "recall@100", "recall@500", "mrr@10")
    lines = ["| mode | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for mode in ("dense", "lexical", "hybrid"):
        if mode in modes:
            lines.append(f"| {mode} | " + " | ".join(f"{modes[mode].get(c, float('nan')):.3f}" for c in cols) + " |")
    f = modes.get("fusion") or {}
    if f:
        lines.append("")
        lines.append("fusion: " + ", ".join(f"{k}={v}" for k, v in f.items()))
    return "\n".join(lines)


def _plots(results: Sequence[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    objectives = list(dict.fromkeys(r["objective"] for r in results))
    # Recall@K curves (mean over seeds)
    fig, ax = plt.subplots(figsize=(6, 4))
    for obj in objectives:
        curves = [r["metrics"].get("recall_curve") for r in results if r["objective"] == obj]
        curves = [c for c in curves if c]
        if not curves:
            continue
        ks = sorted(int(k) for k in curves[0])
        ax.plot(ks, [statistics.fmean(c[str(k)] for c in curves) for k in ks], marker="o", label=obj)
    ax.set(xscale="log", xlabel="K", ylabel="Recall@K", title="Query → listing, full catalog")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "recall_at_k.png", dpi=120)
    plt.close(fig)
    written.append("recall_at_k.png")
    # Training curves (seed 0 of each objective, or the first seed found)
    fig, ax = plt.subplots(figsize=(6, 4))
    for obj in objectives:
        run = next((r for r in results if r["objective"] == obj and r.get("epochs")), None)
        if run:
            ax.plot([e["epoch"] for e in run["epochs"]], [e["loss"] for e in run["epochs"]], marker="o", label=obj)
    ax.set(xlabel="epoch", ylabel="training loss (objective's own scale)", title="Training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=120)
    plt.close(fig)
    written.append("training_curves.png")
    # Cross-view recall@10 per view type
    views = sorted({v for r in results for v in (r["metrics"].get("cross_view") or {}) if v != "mean"})
    if views:
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / max(1, len(objectives))
        for i, obj in enumerate(objectives):
            runs = [r for r in results if r["objective"] == obj]
            vals = [statistics.fmean(r["metrics"]["cross_view"][v]["recall@10"] for r in runs
                                     if v in (r["metrics"].get("cross_view") or {})) if runs else 0 for v in views]
            ax.bar([j + i * width for j in range(len(views))], vals, width, label=obj)
        ax.set_xticks([j + width * (len(objectives) - 1) / 2 for j in range(len(views))], views)
        ax.set(ylabel="Recall@10", title="Cross-view, leave-one-view-out")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "cross_view.png", dpi=120)
        plt.close(fig)
        written.append("cross_view.png")
    return written


def write_report(results: Sequence[dict[str, Any]], out: Path) -> Path:
    plots = _plots(results, out) if results else []
    body = ["# Objective comparison", "", markdown_table(results), ""]
    body += [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(body) + "\n")
    return path
