"""The pictures of ``bas fidelity``'s sweeps: scores against the number of concepts or the mask quality, with
their 95 % intervals (matplotlib, imported only here: ``pip install 'comfyui-break-a-scene[plots]'``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

#: the scores a sweep plot shows, one panel each (the rest are in the tables)
PLOTTED_SCORES = ("identity_alone", "identity_pair", "pair_both_exact", "identity_context", "leakage_2of3",
                  "attention_iou")
#: the axis label of each sweep
SWEEP_AXES = {"concepts": "number of concepts in the scene", "masks": "masks given to the method"}


def sweep_plot(records: Sequence[dict], axis: str, values: Sequence, series: Sequence[tuple[str, dict]],
               path: str | Path, title: str) -> Path:
    """Write a PNG: one panel per score in PLOTTED_SCORES, the score's mean ± 95 % interval over runs at each value
    of ``axis`` ("concepts" or "masks"), one line per series (label, fields every record of it has)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    from bas_engine.fileio import atomic_path

    from .fidelity import LOWER_IS_BETTER, mean_ci, record_field

    if axis not in SWEEP_AXES:
        raise ValueError(f"axis must be one of {list(SWEEP_AXES)}, got {axis!r}")
    axis_label = SWEEP_AXES[axis]
    numeric = all(isinstance(v, (int, float)) for v in values)
    xs = list(values) if numeric else list(range(len(values)))
    fig, panels = plt.subplots(2, 3, figsize=(12, 6.6), constrained_layout=True)
    offsets = _offsets(len(series), 0.12 if numeric else 0.08)
    for (label, fields), dx in zip(series, offsets):
        runs = [r for r in records if all(record_field(r, k) == v for k, v in fields.items())]
        for score, ax in zip(PLOTTED_SCORES, panels.flat):
            points = [mean_ci([r["scores"][score] for r in runs if record_field(r, axis) == v]) for v in values]
            ax.errorbar([x + dx for x in xs], [m for m, _ in points], yerr=[0 if h != h else h for _, h in points],
                        marker="o", capsize=3, label=label)
    for score, ax in zip(PLOTTED_SCORES, panels.flat):
        better = "lower is better" if score in LOWER_IS_BETTER else "higher is better"
        ax.set_title(f"{score} ({better})", fontsize=10)
        ax.set_xticks(xs, [str(v) for v in values])
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.set_xlabel(axis_label, fontsize=9)
    panels.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def _offsets(n: int, step: float) -> list[float]:
    """Small horizontal offsets so the error bars of several lines do not hide each other."""
    return [(i - (n - 1) / 2) * step for i in range(n)]
