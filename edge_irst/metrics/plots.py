"""PNG plots of an IrstdResult: pixel ROC, pixel PR, and target Pd-Fa curves. Needs matplotlib, imported here
on first use only (the metrics themselves never need it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError, MissingDependencyError
from .irstd import IrstdResult


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError("matplotlib (needed for plots)", "plots", str(exc)) from exc
    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_plots(result: IrstdResult, folder, distances=(1.0, 3.0, 5.0)) -> list[Path]:
    """Write roc.png, pr.png and pd_fa.png to `folder` (created); returns the paths written.

    distances: the distance thresholds drawn on the Pd-Fa plot (those that were evaluated).
    """
    pixel, target = result.pixel, result.target
    if not pixel.thresholds.size or not target.confidence_thresholds.size:
        raise InputError("plots need the curves: evaluate with curves=True")
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    caption = f"compat={result.conventions.compat}, matching={result.conventions.matching}"
    written = []

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(pixel.roc_fpr, pixel.roc_tpr, marker=".")
    ax.plot([0, 1], [0, 1], color="0.8", linestyle="--")
    ax.set(xlabel="false-positive rate (pixels)", ylabel="true-positive rate (pixels)",
           title=f"pixel ROC, AUC {pixel.roc_auc:.4f}\n{caption}", xlim=(0, 1), ylim=(0, 1.01))
    written.append(_save(fig, folder / "roc.png", plt))

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(pixel.pr_recall, pixel.pr_precision, marker=".")
    ax.set(xlabel="recall (pixels)", ylabel="precision (pixels)",
           title=f"pixel PR, AP {pixel.ap:.4f}, AUC {pixel.pr_auc:.4f}\n{caption}", xlim=(0, 1), ylim=(0, 1.01))
    written.append(_save(fig, folder / "pr.png", plt))

    fig, ax = plt.subplots(figsize=(6, 5))
    for distance in distances:
        if not np.any(np.isclose(target.distances, distance)):
            continue
        fa, pd = target.pd_fa_curve(distance)
        k = target.index(distance)
        ax.plot(fa[1:], pd[1:], marker="o", label=f"d < {distance:g} px (AUC {target.pd_fa_auc[k]:.3g})")
    ax.set_xscale("symlog", linthresh=1e-7)
    ax.set(xlabel="Fa (false-alarm pixels / all pixels)", ylabel="Pd", ylim=(0, 1.01),
           title=f"target Pd-Fa over confidence thresholds\n{caption}")
    ax.legend(loc="lower right")
    written.append(_save(fig, folder / "pd_fa.png", plt))
    return written


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
