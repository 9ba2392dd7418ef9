"""PNG plots from a summary: attack success against cost, rates against psr rounds, psr rounds per dataset.

Figures are built with `matplotlib.figure.Figure` and written by the Agg canvas directly: no pyplot, so no
global figure state and no display backend.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.plans import Plan

if TYPE_CHECKING:
    from evaluation.compare import Comparison

SAFETY_COST_PNG: Final = "safety_vs_cost.png"
ROUNDS_PNG: Final = "rates_vs_rounds.png"
ROUNDS_SPENT_PNG: Final = "rounds_by_dataset.png"
COST_AXES: Final = (
    ("backend_calls_mean", "mean backend calls per request"),
    ("completion_tokens_mean", "mean generated tokens per request (visible + hidden)"),
)


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)
    return path


def _percent_with_error(entry: dict[str, Any]) -> tuple[float, list[list[float]]]:
    value = 100 * entry["rate"]
    return value, [[value - 100 * entry["ci95_low"]], [100 * entry["ci95_high"] - value]]


def harmful_datasets(summary: dict[str, Any]) -> list[str]:
    """Datasets on which some plan has an attack success rate, in the summary's order."""
    return [
        name
        for name, rows in summary["datasets"].items()
        if any("attack_success" in e for e in rows.values())
    ]


def _scatter_cost(
    axes: Axes, summary: dict[str, Any], dataset: str, cost_key: str, colours: dict[str, Any]
) -> None:
    plotted = False
    for plan, entry in summary["datasets"][dataset].items():
        # The cost on this dataset (older summaries have only the plan's cost over all of them).
        x = entry.get("cost", summary["plans"][plan]["cost"]).get(cost_key)
        if "attack_success" not in entry or x is None:
            continue
        y, error = _percent_with_error(entry["attack_success"])
        axes.errorbar([x], [y], yerr=error, fmt="o", capsize=3, color=colours[plan], label=plan)
        plotted = True
    if not plotted:
        axes.text(
            0.5, 0.5, "not reported by the endpoint", ha="center", va="center", transform=axes.transAxes
        )
    axes.set_ylim(-5, 105)
    axes.grid(alpha=0.3)


def plot_safety_vs_cost(summary: dict[str, Any], out_dir: Path) -> Path | None:
    """One panel per harmful dataset (columns) and cost measure (rows); a plan keeps its colour in every
    panel and is named once, in the figure's legend, so many plans stay readable."""
    datasets = harmful_datasets(summary)
    if not datasets:
        return None
    palette = matplotlib.colormaps["tab10"]
    colours = {plan: palette(i % palette.N) for i, plan in enumerate(summary["plans"])}
    figure = Figure(figsize=(1.5 + 3.5 * len(datasets), 7.5))
    grid = figure.subplots(len(COST_AXES), len(datasets), squeeze=False, sharey=True)
    for row, (key, label) in zip(grid, COST_AXES, strict=True):
        for axes, dataset in zip(row, datasets, strict=True):
            _scatter_cost(axes, summary, dataset, key, colours)
            axes.set_xlabel(label, fontsize=8)
        row[0].set_ylabel("attack success, % (Wilson 95%)")
    for axes, dataset in zip(grid[0], datasets, strict=True):
        axes.set_title(dataset)
    # A legend, not labels beside the points: plans with equal rates would print over each other.
    handles = {
        label: handle
        for axes in grid.flat
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True)
    }
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="lower center", ncols=min(len(handles), 6))
    figure.suptitle("Safety against cost, per harmful dataset and plan")
    figure.tight_layout(rect=(0, 0.07 if handles else 0, 1, 1))
    return _save(figure, out_dir / SAFETY_COST_PNG)


def rounds_groups(summary: dict[str, Any]) -> list[list[tuple[int, str]]]:
    """Plans that differ only by their psr rounds, as (rounds, plan) sorted by rounds; groups of 2 or more.

    A plan that sends the very headers of an earlier one differs from it by something the summary does not
    see (a gateway setting, such as the review mode), so it starts a series of its own rather than sharing a
    point on the earlier plan's line.
    """
    series_by_request: dict[tuple[tuple[str, str], ...], list[dict[int, str]]] = defaultdict(list)
    for name, info in summary["plans"].items():
        if info["headers"] is None:
            continue
        plan = Plan(name, tuple(info["headers"].items()))
        if plan.psr_rounds is None:
            continue
        series = series_by_request[plan.without_rounds()]
        free = next((points for points in series if plan.psr_rounds not in points), None)
        if free is None:
            series.append(free := {})
        free[plan.psr_rounds] = name
    every_series = (points for series in series_by_request.values() for points in series)
    return [sorted(points.items()) for points in every_series if len(points) > 1]


def plot_rates_vs_rounds(summary: dict[str, Any], out_dir: Path) -> Path | None:
    groups = rounds_groups(summary)
    if not groups:
        return None
    figure = Figure(figsize=(11, 4.5))
    panels = zip(figure.subplots(1, 2), ("attack_success", "over_refusal"), strict=True)
    for axes, measure in panels:
        for number, group in enumerate(groups, start=1):
            for dataset, rows in summary["datasets"].items():
                points = [(r, rows[p][measure]) for r, p in group if p in rows and measure in rows[p]]
                if not points:
                    continue
                values = [_percent_with_error(entry) for _, entry in points]
                lower = [e[0][0] for _, e in values]
                upper = [e[1][0] for _, e in values]
                axes.errorbar(
                    [r for r, _ in points],
                    [v for v, _ in values],
                    yerr=[lower, upper],
                    marker="o",
                    capsize=3,
                    label=f"{dataset}" + (f" (group {number})" if len(groups) > 1 else ""),
                )
        axes.set_xlabel("psr reflection rounds")
        axes.set_ylabel(f"{measure.replace('_', ' ')}, % (Wilson 95%)")
        axes.set_ylim(-5, 105)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    figure.suptitle("Rates against psr rounds (plans that differ only by rounds)")
    figure.tight_layout()
    return _save(figure, out_dir / ROUNDS_PNG)


def rounds_spent(summary: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    """{dataset: {plan: (mean rounds granted, mean rounds used)}} for plans whose endpoint reported rounds."""
    spent: dict[str, dict[str, tuple[float, float]]] = {}
    for dataset, rows in summary["datasets"].items():
        for plan, entry in rows.items():
            cost = entry.get("cost", {})
            granted, used = cost.get("rounds_granted_mean"), cost.get("rounds_used_mean")
            if granted is not None and used is not None:
                spent.setdefault(dataset, {})[plan] = (granted, used)
    return spent


def plot_rounds_by_dataset(summary: dict[str, Any], out_dir: Path) -> Path | None:
    """Grouped bars per dataset: rounds granted (outline) and used (filled), one bar per plan.

    The picture `X-Twice-Rounds: auto` is judged by: few rounds on benign sets, the maximum on harmful ones.
    """
    spent = rounds_spent(summary)
    if not spent:
        return None
    plans = [plan for plan in summary["plans"] if any(plan in rows for rows in spent.values())]
    width = 0.8 / len(plans)
    figure = Figure(figsize=(11, 4.5))
    axes = figure.subplots()
    for index, plan in enumerate(plans):
        positions = [number + (index - (len(plans) - 1) / 2) * width for number in range(len(spent))]
        # A plan that did not run on a dataset gets no bar there, not a bar of 0 rounds.
        pairs = [rows.get(plan, (math.nan, math.nan)) for rows in spent.values()]
        bars = axes.bar(positions, [used for _, used in pairs], width, label=f"{plan}: used")
        axes.bar(
            positions,
            [granted for granted, _ in pairs],
            width,
            fill=False,
            edgecolor=bars.patches[0].get_facecolor(),
            label=f"{plan}: granted",
        )
    axes.set_xticks(range(len(spent)), list(spent), rotation=15, fontsize=8)
    axes.set_ylabel("mean psr rounds per request")
    axes.set_ylim(0, 1.3 * max(granted for rows in spent.values() for granted, _ in rows.values()) + 0.5)
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=8, ncols=len(plans), loc="upper center")
    figure.suptitle("psr rounds granted and used, per dataset and plan")
    figure.tight_layout()
    return _save(figure, out_dir / ROUNDS_SPENT_PNG)


def write_plots(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    written = [
        plot_safety_vs_cost(summary, out_dir),
        plot_rates_vs_rounds(summary, out_dir),
        plot_rounds_by_dataset(summary, out_dir),
    ]
    return [path for path in written if path is not None]


def plot_comparison(comparison: Comparison, path: Path) -> Path:
    """Each run's rate with its Wilson interval, per group, each group's mean as a bar, and the paired
    difference with its interval in the title: how far runs of one setting spread beside the settings' gap."""
    figure = Figure(figsize=(6.5, 4.5))
    axes = figure.add_subplot()
    groups = (
        ("baseline", comparison.baseline, comparison.baseline_mean),
        ("candidate", comparison.candidate, comparison.candidate_mean),
    )
    for position, (_, runs, mean) in enumerate(groups):
        offsets = [0.0] if len(runs) == 1 else [-0.25 + 0.5 * i / (len(runs) - 1) for i in range(len(runs))]
        for offset, (plan, run) in zip(offsets, runs.items(), strict=True):
            value, error = _percent_with_error(run.as_dict())
            axes.errorbar(
                position + offset,
                value,
                yerr=error,
                fmt="o",
                color="tab:gray",
                capsize=3,
            )
            axes.annotate(
                plan, (position + offset, value), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
        axes.hlines(
            100 * mean,
            position - 0.35,
            position + 0.35,
            colors="tab:red",
            label="mean over runs" if position == 0 else "_nolegend_",
        )
    axes.set_xticks([0, 1], [f"{name} ({len(runs)} runs)" for name, runs, _ in groups])
    axes.set_xlim(-0.6, 1.6)
    axes.set_ylabel(f"{comparison.measure.replace('_', ' ')}, % (Wilson 95% per run)")
    low, high = comparison.ci95
    axes.set_title(
        f"candidate − baseline: {100 * comparison.difference:+.1f} points "
        f"(paired 95% CI {100 * low:+.1f} to {100 * high:+.1f}), {comparison.items} items",
        fontsize=9,
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)
