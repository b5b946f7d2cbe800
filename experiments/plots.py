"""PNG charts of a simulation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, PercentFormatter  # noqa: E402

from experiments.runner import SimulationResult  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


# Axis labels with thousands separators, never matplotlib's "1e6" offset notation.
THOUSANDS = FuncFormatter(
    lambda value, _: f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}")


def _drift_line(ax: plt.Axes, result: SimulationResult) -> None:
    if result.stream.drift_index is not None:
        ax.axvline(result.stream.drift_index, color="grey", linestyle="--", label="drift")


def cumulative_reward(result: SimulationResult, path: Path) -> Path:
    """Cumulative reward of every policy over the decisions."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, trace in result.traces.items():
        if name in result.metrics:
            ax.plot(np.cumsum(trace.reward), label=name)
    _drift_line(ax, result)
    ax.set(xlabel="decision", ylabel="cumulative reward", title="Cumulative reward")
    ax.xaxis.set_major_formatter(THOUSANDS)
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.legend()
    return _save(fig, path)


def cumulative_regret(result: SimulationResult, path: Path) -> Path:
    """Cumulative expected regret against the oracle."""
    oracle = result.traces["oracle"].expected
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, trace in result.traces.items():
        if name in result.metrics and name != "oracle":
            ax.plot(np.cumsum(oracle - trace.expected), label=name)
    _drift_line(ax, result)
    ax.set(xlabel="decision", ylabel="cumulative regret", title="Regret against the oracle")
    ax.xaxis.set_major_formatter(THOUSANDS)
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.legend()
    return _save(fig, path)


def arm_share_by_tier(result: SimulationResult, policy: str, path: Path,
                      windows: int = 20) -> Path:
    """Stacked arm shares over time, one panel per tier, for one policy."""
    trace = result.traces[policy]
    names = np.array([*result.arms, "none"])
    chosen = names[trace.arm]
    tiers = [t for t in result.tier_order if t in set(result.tiers)]
    fig, axes = plt.subplots(1, len(tiers), figsize=(3 * len(tiers), 3.2), sharey=True,
                             squeeze=False)
    edges = np.linspace(0, len(chosen), windows + 1).astype(int)
    for ax, tier in zip(axes[0], tiers, strict=True):
        shares = np.zeros((len(names), windows))
        for w in range(windows):
            sl = slice(edges[w], edges[w + 1])
            mask = result.tiers[sl] == tier
            if mask.any():
                for i, arm in enumerate(names):
                    shares[i, w] = np.mean(chosen[sl][mask] == arm)
        ax.stackplot(edges[1:], shares, labels=list(names))
        ax.set(title=tier, xlabel="decision")
        ax.xaxis.set_major_formatter(THOUSANDS)
    axes[0][0].set_ylabel("arm share")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1, 1))
    fig.suptitle(f"Arm share by tier over time: {policy}", y=1.04)
    return _save(fig, path)


def simulation_plots(result: SimulationResult, out_dir: Path) -> list[Path]:
    """Every chart of a simulation, written into ``out_dir``."""
    paths = [cumulative_reward(result, out_dir / "cumulative_reward.png"),
             cumulative_regret(result, out_dir / "regret.png")]
    for name in result.metrics:
        if name != "oracle":
            paths.append(arm_share_by_tier(result, name, out_dir / f"arm_share_{name}.png"))
    return paths


def interval_chart(title: str, rows: dict[str, tuple[float, float, float]], path: Path,
                   reference: float | None = None, percent: bool = False) -> Path:
    """Horizontal point-and-interval chart (``name -> (mean, low, high)``); with
    ``percent`` the values are fractions, labelled as percentages."""
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.5))
    names = list(rows)
    for i, name in enumerate(names):
        mean, low, high = rows[name]
        ax.errorbar(mean, i, xerr=[[mean - low], [high - mean]], fmt="o", capsize=4)
    if reference is not None:
        ax.axvline(reference, color="grey", linestyle="--")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()  # the first row on top, as in the table beside it
    ax.xaxis.set_major_formatter(PercentFormatter(1.0) if percent else THOUSANDS)
    ax.set_title(title)
    return _save(fig, path)


def funnel_chart(title: str, funnel: dict[str, int], path: Path) -> Path:
    """Horizontal bars of a campaign's funnel, first stage on top, each labelled with its
    count (thousands separators)."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(funnel) + 1.2))
    names = list(funnel)
    values = [funnel[name] for name in names]
    ax.barh(range(len(names)), values, color="#4C72B0")
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:,}", va="center")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(THOUSANDS)
    ax.set_xlim(0, max(max(values), 1) * 1.15)
    ax.set_title(title)
    return _save(fig, path)
