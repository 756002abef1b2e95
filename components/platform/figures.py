"""PNG line figures of the stages' curves (F1 vs N, accuracy vs N, accuracy vs turn), logged to MLflow.

The stages also write the same rows as DVC plots (``plots/*.json``); these PNGs are for the MLflow UI and
the reports folder.

    line_figure(Path("data/benchmark/f1_vs_n.png"), rows, x="n", ylabel="mean F1 (%)", title="f1 vs n")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def line_figure(
    path: Path, rows: list[dict[str, Any]], x: str, ylabel: str, title: str, log_x: bool = False
) -> Path:
    """One line per column of ``rows`` other than ``x`` (missing points skipped); returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in [k for k in (rows[0] if rows else {}) if k != x]:
        points = [(r[x], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    ax.set(xlabel=x, ylabel=ylabel, title=title)
    if log_x:
        ax.set_xscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
