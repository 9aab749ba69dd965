"""Report figures (matplotlib, PNG + SVG), each drawn only when the sweep has its axis.

Every function returns the PNG path (``None`` when there is nothing to draw). Files are byte-stable across
re-renders: the SVG hash salt is fixed, dates and software tags are not written. Scores are in %.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.stats import task_order

PLOT_STEMS = (
    "scores",
    "score_vs_k",
    "score_vs_tau",
    "score_vs_beta",
    "score_vs_lr",
    "training_curves",
    "compute",
    "score_vs_compute",
    "forgetting",
)
CURVE_KEYS = [
    ("loss", "loss"),
    ("nll", "NLL of the target"),
    ("token_acc", "token accuracy"),
    ("entropy", "entropy (nats)"),
    ("p_gt", "p(ground truth)"),
    ("draw_hit_rate", "ground-truth hit rate of draws"),
    ("reward", "reward (GRPO, mean)"),
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "otr-harness"  # stable SVG ids: re-rendering is idempotent
    matplotlib.rcParams["font.size"] = 9
    import matplotlib.pyplot as plt

    return plt


def save(fig, out_dir: Path, stem: str) -> Path:
    """PNG (embedded in the HTML, linked from the Markdown) and SVG, both byte-stable across re-renders."""
    plt = _plt()
    if fig.get_layout_engine() is not None:  # lay out once, not once per file format
        fig.canvas.draw()
        fig.set_layout_engine("none")
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=110, metadata={"Software": None})
    fig.savefig(out_dir / f"{stem}.svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return png


def colours(methods: list[str]) -> dict[str, str]:
    """One colour per method, the same in every figure."""
    plt = _plt()
    palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def _grid(n: int, width: float = 3.6, height: float = 2.9, max_cols: int = 3):
    plt = _plt()
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained"
    )
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _tick_label(task: str, width: int = 14) -> str:
    """A task name broken after underscores into lines of ~``width`` characters, so that long names
    (``toy_reasoning_logic_ood``) under neighbouring bars do not run into each other."""
    return "_\n".join(
        line.replace(" ", "_")
        for line in textwrap.wrap(
            task.replace("_", " "), width, break_long_words=False, break_on_hyphens=False
        )
    )


def _legend_below(fig, axes) -> None:
    """One legend for all panels, below them (inside the figure: constrained layout makes room)."""
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        ncol = min(len(labels), 4)
        fig.set_figheight(fig.get_figheight() + 0.2 * math.ceil(len(labels) / ncol))
        fig.legend(
            [handles[lab] for lab in labels],
            labels,
            loc="outside lower center",
            ncol=ncol,
            frameon=False,
            fontsize=8,
        )


# ----------------------------------------------------------------------------------------- scores
def _grouped_bars(ax, df: pd.DataFrame, col: str, tasks: list[str], methods: list[str], cmap) -> None:
    """One group of bars per task, one bar per method: 100 × ``col`` with error bars 100 × ``std``."""
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        sub = df[df["method"] == m].set_index("task").reindex(tasks)
        xs = np.arange(len(tasks)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(
            xs,
            100 * sub[col],
            width,
            yerr=100 * sub["std"].fillna(0),
            capsize=2,
            label=str(m),
            color=cmap.get(m, "k"),
            error_kw={"lw": 0.8},
        )


def plot_scores(table: pd.DataFrame, out_dir: Path, cmap: dict[str, str]) -> Path | None:
    """Grouped bars: score per task, one bar per method, error bars = std over seeds."""
    if table.empty:
        return None
    plt = _plt()
    tasks = [t for _, _, t in task_order(table)]
    methods = [m for m in table["method"].cat.categories if m in set(table["method"])]
    fig, ax = plt.subplots(
        figsize=(min(2.0 + 1.4 * len(tasks) * max(1, len(methods) / 4), 14), 3.4), layout="constrained"
    )
    _grouped_bars(ax, table, "mean", tasks, methods, cmap)
    split = dict(zip(table["task"], table["split"], strict=False))
    ax.set_xticks(range(len(tasks)), [f"{_tick_label(t)}\n({split[t]})" for t in tasks])
    ax.set_ylabel("score (%)")
    ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
    ax.set_title("Score per task (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _legend_below(fig, [ax])
    return save(fig, out_dir, "scores")


# ------------------------------------------------------------------------------------- ablations
def _knob_cols(df: pd.DataFrame, exclude: set[str]) -> list[str]:
    cols = [c for c in df.columns if c.startswith(("param_", "training_")) or c == "learning_rate"]
    return [c for c in cols if c not in exclude and df[c].nunique(dropna=True) > 1]


def _label(col: str) -> str:
    return "lr" if col == "learning_rate" else col.removeprefix("param_").removeprefix("training_")


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def axis_points(results: pd.DataFrame, axis: str, objectives: tuple[str, ...]) -> pd.DataFrame:
    """Points of a score-vs-knob plot: series, kind, match, lr, task, x, mean, std, n over seeds.

    ``axis`` is an objective parameter ('k', 'tau', 'beta') or 'learning_rate'. A series is one objective
    with its other knobs held fixed (``match`` names them, learning rate aside); only series with >= 2
    values of the knob are kept. For 'beta': lr0 is the most common learning rate of the runs with
    beta != 0; a run with beta = 0 trained at lr0 / (1 - b), where b is a beta run at lr0, is placed at x = b
    (kind 'pair', kept when a series with the same other knobs exists): the pair that tests whether beta
    only rescales the learning rate.
    """
    col = "learning_rate" if axis == "learning_rate" else f"param_{axis}"
    cols = ["series", "kind", "match", "lr", "task", "x", "mean", "std", "n"]
    if results.empty or col not in results:
        return pd.DataFrame(columns=cols)
    sub = results[results["objective"].isin(objectives) & results[col].notna()].copy()
    if sub.empty:
        return pd.DataFrame(columns=cols)
    sub["x"] = sub[col].astype(float)
    sub["kind"] = "main"
    sub["lr"] = sub["learning_rate"].astype(float)
    if axis == "beta":
        nonzero = sub[sub["x"] != 0]
        if not nonzero.empty:
            lr0 = float(nonzero["lr"].mode().iloc[0])
            betas = nonzero.loc[np.isclose(nonzero["lr"], lr0), "x"].unique()
            implied = 1 - lr0 / sub["lr"]
            pair = (
                (sub["x"] == 0)
                & ~np.isclose(sub["lr"], lr0)
                & implied.apply(lambda b: bool(np.isclose(b, betas, atol=1e-6).any()))
            )
            sub.loc[pair, "x"] = implied[pair].round(10)
            sub.loc[pair, "kind"] = "pair"
    parts = []
    for obj, g in sub.groupby("objective", sort=False):
        knobs = _knob_cols(g, {col, "learning_rate"})
        lr_varies = axis != "learning_rate" and g.loc[g["kind"] == "main", "lr"].nunique() > 1
        match = [
            ", ".join(f"{_label(c)}={_fmt(v)}" for c, v in zip(knobs, row, strict=True))
            for row in g[knobs].itertuples(index=False)
        ]
        labels = []
        for m, kind, lr in zip(match, g["kind"], g["lr"], strict=True):
            fixed = ", ".join(x for x in (m, f"lr={lr:.3g}" if lr_varies and kind == "main" else "") if x)
            labels.append(
                obj + (f" ({fixed})" if fixed else "") + (": β=0 at lr0/(1−β)" if kind == "pair" else "")
            )
        parts.append(g.assign(series=labels, match=match))
    sub = pd.concat(parts)
    pts = sub.groupby(["series", "kind", "match", "lr", "task", "x"], sort=False)["value"].agg(
        mean="mean", std="std", n="count"
    )
    pts = pts.reset_index()
    spread = pts[pts["kind"] == "main"].groupby("series")["x"].nunique()
    keep = set(spread[spread >= 2].index)
    main_matches = set(pts.loc[pts["series"].isin(keep), "match"])
    pts = pts[pts["series"].isin(keep) | ((pts["kind"] == "pair") & pts["match"].isin(main_matches))]
    return pts[cols].sort_values(["series", "task", "x"], kind="stable").reset_index(drop=True)


def plot_axis(
    results: pd.DataFrame,
    table: pd.DataFrame,
    out_dir: Path,
    *,
    axis: str,
    objectives: tuple[str, ...],
    stem: str,
    title: str,
    xlabel: str,
    log: bool = False,
    exact: str | None = None,
    references: dict[str, str] | None = None,
) -> Path | None:
    """Score vs one knob, one panel per task, error bars = std over seeds; only with >= 2 distinct values.

    ``exact``: an objective drawn as horizontal reference lines (exact OTR: the K = ∞ limit);
    ``references``: label -> method drawn as dotted horizontal lines (SFT, base).
    """
    pts = axis_points(results, axis, objectives)
    if pts.empty:
        return None
    tasks = [t for _, _, t in task_order(results) if t in set(pts["task"])]
    fig, axes = _grid(len(tasks))
    series = list(dict.fromkeys(pts["series"]))
    styles = {s: f"C{i % 10}" for i, s in enumerate(series)}
    for ax, task in zip(axes, tasks, strict=True):
        for s in series:
            p = pts[(pts["series"] == s) & (pts["task"] == task)]
            if p.empty:
                continue
            pair = (p["kind"] == "pair").all()
            ax.errorbar(
                p["x"],
                100 * p["mean"],
                yerr=100 * p["std"].fillna(0),
                marker="s" if pair else "o",
                ms=4,
                capsize=3,
                lw=1.2,
                ls="--" if pair else "-",
                color=styles[s],
                label=s,
            )
        if exact is not None:
            ex = results[(results["objective"] == exact) & (results["task"] == task)]
            for j, (m, g) in enumerate(ex.groupby("method", sort=False)):
                mu, sd = 100 * g["value"].mean(), 100 * (g["value"].std() if len(g) > 1 else 0.0)
                ax.axhline(mu, color="k", lw=1.2, ls=(0, (5, 2 + j)), label=f"{m}: exact (K = ∞)")
                if sd > 0:
                    ax.axhspan(mu - sd, mu + sd, color="k", alpha=0.08, lw=0)
        for k, (lab, m) in enumerate((references or {}).items()):
            row = table[(table["method"] == m) & (table["task"] == task)]
            if not row.empty:
                ax.axhline(100 * row["mean"].iloc[0], color=f"C{(7 + k) % 10}", lw=1, ls=":", label=lab)
        if log:
            ax.set_xscale("log", base=2 if axis == "k" else 10)
        xs = sorted(set(pts[pts["task"] == task]["x"]))
        if log or len(xs) <= 8:
            ax.set_xticks(xs, [f"{x:.3g}" for x in xs])
            ax.minorticks_off()
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("score (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    _legend_below(fig, axes)
    return save(fig, out_dir, stem)


# ------------------------------------------------------------------------------- training curves
def plot_training_curves(metrics: pd.DataFrame, out_dir: Path, cmap: dict[str, str]) -> Path | None:
    """Per method: the mean over seeds per logged step, shaded between the seeds' min and max."""
    if metrics.empty or "step" not in metrics:
        return None
    keys = [(k, t) for k, t in CURVE_KEYS if k in metrics and metrics[k].notna().any()]
    if not keys:
        return None
    fig, axes = _grid(len(keys), width=3.5, height=2.7)
    methods = list(dict.fromkeys(metrics["method"]))
    for ax, (key, title) in zip(axes, keys, strict=True):
        for m in methods:
            sub = metrics[(metrics["method"] == m) & metrics[key].notna()]
            if sub.empty:
                continue
            g = sub.groupby("step")[key].agg(["mean", "min", "max", "count"])
            ax.plot(g.index, g["mean"], color=cmap.get(m, "k"), lw=1.3, label=str(m))
            if (g["count"] > 1).any():
                ax.fill_between(g.index, g["min"], g["max"], color=cmap.get(m, "k"), alpha=0.15, lw=0)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle("Training curves (mean over seeds; band: min–max)")
    _legend_below(fig, axes)
    return save(fig, out_dir, "training_curves")


# --------------------------------------------------------------------------------------- compute
COMPUTE_PANELS = [
    ("wall_time_s", "wall time (s)"),
    ("response_tokens", "response tokens"),
    ("sampled_tokens", "sampled tokens"),
    ("generated_tokens", "generated tokens"),
    ("peak_memory_mb", "peak memory (MB)"),
]
# Drawn only when some run has a non-zero value (a sweep without GRPO keeps its figure as it was).
_NONZERO_PANELS = {"generated_tokens"}


def generates(summaries: pd.DataFrame) -> bool:
    """Whether some run of ``summaries`` generated completions (GRPO): the report then also compares
    methods by estimated FLOs, which count generation beside training."""
    return "generated_tokens" in summaries and bool(
        (pd.to_numeric(summaries["generated_tokens"], errors="coerce").fillna(0) > 0).any()
    )


def plot_compute(summaries: pd.DataFrame, out_dir: Path, cmap: dict[str, str]) -> Path | None:
    """Bars per method (mean over seeds, error bar = std): wall time, tokens, sampled tokens, generated
    tokens (when some run generated), peak memory."""
    if summaries.empty:
        return None
    panels = [
        (k, t)
        for k, t in COMPUTE_PANELS
        if pd.to_numeric(summaries[k], errors="coerce").notna().any()
        and (k not in _NONZERO_PANELS or generates(summaries))
    ]
    if not panels:
        return None
    methods = list(dict.fromkeys(summaries["method"]))
    fig, axes = _grid(len(panels), width=3.3, height=2.6, max_cols=4)
    for ax, (key, title) in zip(axes, panels, strict=True):
        vals = summaries.assign(v=pd.to_numeric(summaries[key], errors="coerce")).groupby(
            "method", sort=False
        )["v"]
        mean, std = vals.mean().reindex(methods), vals.std().reindex(methods).fillna(0)
        ax.bar(range(len(methods)), mean, yerr=std, capsize=2, color=[cmap.get(m, "k") for m in methods])
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle("Compute per method (mean ± std over seeds)")
    return save(fig, out_dir, "compute")


def plot_score_vs_compute(
    results: pd.DataFrame, summaries: pd.DataFrame, out_dir: Path, cmap: dict[str, str]
) -> Path | None:
    """Each trained run: its mean score over the in-domain (and OOD) tasks against its wall time; when some
    run generated completions (GRPO), a second row against the estimated FLOs, which count generation and
    the no-grad forwards beside training (``harness/training/grpo_trainer.py``)."""
    if (
        results.empty
        or summaries.empty
        or pd.to_numeric(summaries["wall_time_s"], errors="coerce").isna().all()
    ):
        return None
    per_run = results.groupby(["run_id", "split"])["value"].mean().unstack()
    df = summaries.set_index("run_id").join(per_run, how="inner")
    splits = [s for s in ("id", "ood") if s in df]
    if df.empty or not splits:
        return None
    xs = [("wall_time_s", "training wall time (s)")]
    if generates(summaries) and pd.to_numeric(df["flos"], errors="coerce").notna().any():
        xs.append(("flos", "estimated FLOs (training + generation)"))
    fig, axes = _grid(len(splits) * len(xs), width=3.8, height=3.0, max_cols=len(splits))
    panels = [(x, split) for x in xs for split in splits]
    for ax, ((key, xlabel), split) in zip(axes, panels, strict=True):
        for m, g in df.groupby("method", sort=False):
            x = pd.to_numeric(g[key], errors="coerce")
            ax.scatter(x, 100 * g[split], color=cmap.get(m, "k"), s=22, label=str(m))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean score (%)")
        ax.set_title({"id": "in-domain tasks", "ood": "OOD tasks"}[split])
        ax.grid(alpha=0.3)
    fig.suptitle("Score vs compute (one point per run)")
    _legend_below(fig, axes)
    return save(fig, out_dir, "score_vs_compute")


# ------------------------------------------------------------------------------------ forgetting
def plot_forgetting(forget: pd.DataFrame, out_dir: Path, cmap: dict[str, str]) -> Path | None:
    """Change vs the base model on the non-target (OOD) tasks, per method: bars ± std over seeds."""
    if forget.empty:
        return None
    plt = _plt()
    tasks = list(dict.fromkeys(forget["task"]))
    methods = list(dict.fromkeys(forget["method"]))
    fig, ax = plt.subplots(
        figsize=(min(2.5 + 1.3 * len(tasks) * max(1, len(methods) / 4), 12), 3.0), layout="constrained"
    )
    _grouped_bars(ax, forget, "delta", tasks, methods, cmap)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(tasks)), [_tick_label(t) for t in tasks])
    ax.set_ylabel("Δ vs base (pp)")
    ax.set_title("Forgetting: change vs the base model on non-target (OOD) tasks")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _legend_below(fig, [ax])
    return save(fig, out_dir, "forgetting")
