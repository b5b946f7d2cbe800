"""Validation plots logged as PNG artifacts: ROC, calibration, lift, feature importance.

Each function takes the validation labels ``y`` (shape ``(n,)``) and named probability
arrays (the model and the baselines) and writes one PNG, returning its path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def roc_plot(y: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> Path:
    """ROC curve of every scorer on one axes."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, p in scores.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    return _save(fig, path)


def calibration_plot(y: np.ndarray, scores: dict[str, np.ndarray], path: Path,
                     bins: int = 10) -> Path:
    """Mean predicted vs observed event rate per equal-width probability bin."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, p in scores.items():
        index = np.minimum((np.asarray(p) * bins).astype(int), bins - 1)
        used = [b for b in range(bins) if (index == b).any()]
        ax.plot([p[index == b].mean() for b in used], [y[index == b].mean() for b in used],
                "o-", label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title="calibration")
    ax.legend(loc="upper left")
    return _save(fig, path)


def lift_plot(y: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> Path:
    """Event rate of each score decile (1 = highest scores) over the overall rate."""
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(1, len(scores))
    for i, (name, p) in enumerate(scores.items()):
        order = np.argsort(-np.asarray(p), kind="stable")
        lifts = [y[chunk].mean() / y.mean() for chunk in np.array_split(order, 10)]
        ax.bar(np.arange(1, 11) + i * width, lifts, width=width, label=name)
    ax.axhline(1.0, color="k", lw=1, ls=":")
    ax.set(xlabel="decile (1 = highest score)", ylabel="lift", title="lift by decile")
    ax.legend()
    return _save(fig, path)


def importance_plot(names: list[str], gains: np.ndarray, path: Path, top: int = 20) -> Path:
    """Horizontal bars of the ``top`` features by total split gain."""
    order = np.argsort(gains)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1))
    ax.barh([names[i] for i in order], np.asarray(gains)[order])
    ax.set(xlabel="total gain", title="feature importance")
    return _save(fig, path)


def lorenz_plot(spend: np.ndarray, forecasts: dict[str, np.ndarray], path: Path) -> Path:
    """Share of actual spend held by the top x% of users, ranked by each forecast (and by the
    actual spend itself: the best any forecast can do)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    share = np.arange(1, len(spend) + 1) / len(spend)
    for name, ranking in {"actual (best)": spend, **forecasts}.items():
        order = np.argsort(-np.asarray(ranking), kind="stable")
        ax.plot(share, np.cumsum(spend[order]) / spend.sum(), label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="share of users (highest forecast first)", ylabel="share of actual spend",
           title="Lorenz curve of the LTV forecasts")
    ax.legend(loc="lower right")
    return _save(fig, path)
