"""Assemble the report: tables and figures from the tidy table, rendered to Markdown and HTML.

``render(sweep_dir, out_dir)`` writes ``results.csv`` (+ ``results.parquet`` when pyarrow is there), the
figures (PNG + SVG), ``report.md`` (images beside it) and ``report.html`` (one self-contained file: images
embedded as data URIs, a table of contents). Nothing in the outputs depends on the time or the machine, so
rendering twice gives byte-identical files. Every string that comes from a run (method names, errors,
model generations) is escaped: by jinja2's autoescape in HTML, and in Markdown by escaping table cells and
putting generations in code fences.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import yaml

from harness.report import plots, reference, tuning
from harness.report.collect import (
    collect,
    example_generations,
    load_metrics,
    load_samples,
    load_summaries,
    stale_run_dirs,
)
from harness.report.stats import N_BOOT, deltas, main_table, significance, task_order
from harness.runs.io import atomic_write_text

SPLIT_NAMES = {"id": "in-domain", "ood": "OOD"}
TEMPLATES = Path(__file__).resolve().parent.parent / "report_templates"


# ----------------------------------------------------------------------------------- table model
@dataclass
class Cell:
    text: str
    bold: bool = False
    sub: list[tuple[str, str]] = field(default_factory=list)  # (text, css class) lines under the value
    cls: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    groups: list[tuple[str, int]] | None = None  # a first header row: (label, colspan)
    id: str = ""
    caption: str = ""
    left: tuple[int, ...] = (0,)  # text columns (left-aligned); the others hold numbers

    def md(self) -> str:
        if self.groups:
            spans = [g for g, n in self.groups for _ in range(n)]
            header = [
                _md_cell(h) + (f"<br>{_md_cell(g)}" if g else "")
                for h, g in zip(self.header, spans, strict=True)
            ]
        else:
            header = [_md_cell(h) for h in self.header]
        align = ["---" if i in self.left else "--:" for i in range(len(header))]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        for row in self.rows:
            cells = []
            for c in row:
                text = _md_cell(c.text)
                if c.bold and text:
                    text = f"**{text}**"
                text += "".join(f"<br>{_md_cell(s)}" for s, _ in c.sub)
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _md_cell(text: Any) -> str:
    """A Markdown table cell that cannot inject HTML or break the table."""
    s = "" if text is None else str(text)
    s = (
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("*", "\\*")
    )
    return s.replace("\r", " ").replace("\n", " ")


def _md_text(text: Any) -> str:
    return _md_cell(text).replace("\\|", "|")


def _fence(text: str) -> str:
    """A fenced code block longer than any backtick run inside ``text`` (so the text cannot close it)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}text\n{text}\n{ticks}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def _isnan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_score(mean: float, std: float, n: int) -> str:
    """'55.0 ± 7.1 (n=2)': % mean over seeds, sample std (omitted for one seed), n seeds."""
    s = _pct(mean)
    if n > 1 and not _isnan(std):
        s += f" ± {_pct(std)}"
    return f"{s} (n={n})"


def _num(x: Any, unit: str = "") -> str:
    if _isnan(x):
        return "–"
    x = float(x)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


# ---------------------------------------------------------------------------------- main tables
def pick_reference(runs: pd.DataFrame, table: pd.DataFrame, name: str) -> str | None:
    """The method the deltas refer to: a variant called ``name``, else the first one with that objective."""
    if table.empty or runs.empty:
        return None
    have = set(table["method"].astype(str))
    if name in have:
        return name
    for m, obj in zip(runs["method"], runs["objective"], strict=True):
        if obj == name and m in have:
            return m
    return None


def _columns(table: pd.DataFrame) -> tuple[list[str], list[str], list[tuple[str, int]]]:
    order = task_order(table)
    tasks = [t for _, _, t in order]
    header = [*tasks]
    groups: list[tuple[str, int]] = []
    for d, s, _ in order:
        label = f"{d} · {SPLIT_NAMES.get(s, s)}"
        if groups and groups[-1][0] == label:
            groups[-1] = (label, groups[-1][1] + 1)
        else:
            groups.append((label, 1))
    return tasks, header, groups


def main_cells(
    table: pd.DataFrame, sft: str | None = None, base: str | None = None, sig: pd.DataFrame | None = None
) -> Table:
    """Method × task: mean ± std (n), best mean per column bold, then Δ vs SFT [95 % CI] and Δ vs base."""
    tasks, header, groups = _columns(table)
    best = table.groupby("task")["mean"].max()
    d_sft = deltas(table, sft).set_index(["method", "task"])["delta"] if sft else None
    d_base = deltas(table, base).set_index(["method", "task"])["delta"] if base else None
    ci = {} if sig is None or sig.empty else {(r.method, r.task): r for r in sig.itertuples()}
    rows = []
    for method, sub in table.groupby("method", sort=True, observed=True):
        by_task = {r.task: r for r in sub.itertuples()}
        cells = [Cell(str(method))]
        for t in tasks:
            r = by_task.get(t)
            if r is None:
                cells.append(Cell("–"))
                continue
            cell = Cell(fmt_score(r.mean, r.std, r.n), bold=bool(r.mean == best[t]))
            if d_sft is not None and method != sft and not _isnan(d_sft.get((method, t))):
                line, cls = f"Δ SFT {_pp(d_sft[(method, t)])}", "delta"
                c = ci.get((method, t))
                if c is not None:
                    line += f" [{_pp(c.lo)}, {_pp(c.hi)}]" + ("*" if c.significant else "")
                    cls = ("sig-pos" if c.lo > 0 else "sig-neg") if c.significant else "delta"
                cell.sub.append((line, cls))
            if d_base is not None and method != base and not _isnan(d_base.get((method, t))):
                cell.sub.append((f"Δ base {_pp(d_base[(method, t)])}", "delta"))
            cells.append(cell)
        rows.append(cells)
    return Table(["method", *header], rows, groups=[("", 1), *groups], id="main-table")


def wide_table(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The main table as plain strings (no deltas): header and rows, best mean per column in ``**bold**``."""
    t = main_cells(table)
    return t.header, [[f"**{c.text}**" if c.bold else c.text for c in row] for row in t.rows]


def significance_table(sig: pd.DataFrame, sft: str) -> Table:
    rows = [
        [
            Cell(str(r.method)),
            Cell(str(r.task)),
            Cell(_pp(r.delta)),
            Cell(f"[{_pp(r.lo)}, {_pp(r.hi)}]"),
            Cell(str(r.n)),
            Cell(f"{r.seeds} / {r.ref_seeds}"),
            Cell(
                "yes" if r.significant else "no",
                bold=bool(r.significant),
                cls="sig-pos" if r.significant and r.lo > 0 else ("sig-neg" if r.significant else ""),
            ),
        ]
        for r in sig.itertuples()
    ]
    header = [
        "method",
        "task",
        f"Δ vs {sft} (pp)",
        "95% CI (pp)",
        "questions",
        f"seeds (method / {sft})",
        "CI excludes 0",
    ]
    return Table(header, rows, id="significance-table", left=(0, 1))


def compute_table(summaries: pd.DataFrame, sft: str | None) -> Table:
    """Per method, mean ± std over seeds of the compute accounting, and wall time relative to SFT."""
    fields = [
        ("wall_time_s", "wall time (s)"),
        ("train_runtime_s", "train runtime (s)"),
        ("steps", "steps"),
        ("response_tokens", "response tokens"),
        ("sampled_tokens", "sampled tokens"),
        ("peak_memory_mb", "peak memory (MB)"),
        ("flos", "FLOs"),
    ]
    g = summaries.groupby("method", sort=False)
    wall = g["wall_time_s"].mean() if "wall_time_s" in summaries else pd.Series(dtype=float)
    ref = wall.get(sft) if sft is not None else None
    rows = []
    for m, sub in g:
        cells = [Cell(str(m)), Cell(str(len(sub)))]
        for key, _ in fields:
            v = pd.to_numeric(sub[key], errors="coerce").dropna()
            if v.empty:
                cells.append(Cell("–"))
            elif len(v) > 1 and v.std() > 0:
                cells.append(Cell(f"{_num(v.mean())} ± {_num(v.std())}"))
            else:
                cells.append(Cell(_num(v.mean())))
        rel = wall.get(m) / ref if ref and not _isnan(wall.get(m)) else None
        cells.append(Cell("–" if rel is None else f"{rel:.2f}×"))
        rows.append(cells)
    header = ["method", "runs", *(t for _, t in fields), f"wall time / {sft}" if sft else "wall time / SFT"]
    return Table(header, rows, id="compute-table")


def forgetting(table: pd.DataFrame, base: str | None) -> pd.DataFrame:
    """Per method × non-target (OOD) task: mean − base mean, the method's std over seeds, n."""
    cols = ["method", "task", "delta", "std", "n"]
    if base is None or table.empty:
        return pd.DataFrame(columns=cols)
    ood = table[table["split"] == "ood"]
    base_mean = ood[ood["method"] == base].set_index("task")["mean"]
    out = ood[(ood["method"] != base) & ood["task"].isin(base_mean.index)].copy()
    out["delta"] = out["mean"] - out["task"].map(base_mean.to_dict()).astype(float)
    out["method"] = out["method"].astype(str)
    return out[cols].reset_index(drop=True)


def forgetting_table(forget: pd.DataFrame) -> Table:
    tasks = list(dict.fromkeys(forget["task"]))
    rows = []
    for m, sub in forget.groupby("method", sort=False):
        by = {r.task: r for r in sub.itertuples()}
        cells = [Cell(m)]
        for t in tasks:
            r = by.get(t)
            if r is None:
                cells.append(Cell("–"))
                continue
            txt = _pp(r.delta) + (f" ± {_pct(r.std)}" if r.n > 1 and not _isnan(r.std) else "")
            cells.append(Cell(txt, cls="sig-neg" if r.delta < 0 else ""))
        drops = int((sub["delta"] < 0).sum())
        cells.append(Cell(f"{drops} of {len(sub)}", bold=drops > 0))
        rows.append(cells)
    return Table(["method", *tasks, "drops below base"], rows, id="forgetting-table")


def beta_pairs(results: pd.DataFrame) -> Table | None:
    """OTR(beta = b, lr0) beside OTR(beta = 0, lr0 / (1 - b)), same other knobs: does beta only rescale lr?"""
    pts = plots.axis_points(results, "beta", ("otr",))
    if pts.empty or not (pts["kind"] == "pair").any():
        return None
    main = pts[pts["kind"] == "main"]
    rows = []
    for b in pts[pts["kind"] == "pair"].itertuples():
        lr0 = b.lr * (1 - b.x)
        same = main[
            (main["task"] == b.task)
            & (main["match"] == b.match)
            & np.isclose(main["x"], b.x)
            & np.isclose(main["lr"], lr0)
        ]
        for a in same.itertuples():
            rows.append(
                [
                    Cell(b.task),
                    Cell(b.match or "–"),
                    Cell(f"{b.x:g}"),
                    Cell(f"{a.lr:.3g}: {fmt_score(a.mean, a.std, a.n)}"),
                    Cell(f"{b.lr:.3g}: {fmt_score(b.mean, b.std, b.n)}"),
                    Cell(_pp(a.mean - b.mean)),
                ]
            )
    if not rows:
        return None
    rank = {t: i for i, (_, _, t) in enumerate(task_order(results))}
    rows.sort(key=lambda r: rank.get(r[0].text, len(rank)))  # stable: pairs stay in order within a task
    header = ["task", "other knobs", "β", "OTR(β) at lr0", "OTR(β=0) at lr0/(1−β)", "difference (pp)"]
    return Table(header, rows, id="beta-pairs", left=(0, 1))


def compare_table(table: pd.DataFrame, other: pd.DataFrame, name: str, other_name: str) -> Table | None:
    """Methods and tasks present in both sweeps: this sweep's mean, the other's, and the difference."""
    if table.empty or other.empty:
        return None
    tasks = [t for _, _, t in task_order(table) if t in set(other["task"])]
    a = {(str(r.method), r.task): r for r in table.itertuples()}
    b = {(str(r.method), r.task): r for r in other.itertuples()}
    methods = [m for m in dict.fromkeys(table["method"].astype(str)) if any((m, t) in b for t in tasks)]
    if not tasks or not methods:
        return None
    rows = []
    for m in methods:
        cells = [Cell(m)]
        for t in tasks:
            x, y = a.get((m, t)), b.get((m, t))
            if x is None or y is None:
                cells.append(Cell("–"))
                continue
            cells.append(
                Cell(
                    f"{_pct(x.mean)} vs {_pct(y.mean)}",
                    sub=[(f"Δ {_pp(x.mean - y.mean)} (n={x.n} / {y.n})", "delta")],
                )
            )
        rows.append(cells)
    return Table(["method", *tasks], rows, id="compare-table", caption=f"{name} vs {other_name}")


def reference_tables(matches: list[dict[str, Any]]) -> list[tuple[str, Table]]:
    out = []
    for m in matches:
        rows = []
        for r in m["rows"]:
            cells = [
                Cell(
                    r["method"]
                    + (f" ({r['variant']})" if r["variant"] and r["variant"] != r["method"] else "")
                )
            ]
            for pub, rep in r["cells"]:
                cells.append(
                    Cell(f"{'–' if pub is None else f'{pub:.2f}'} / {'–' if rep is None else f'{rep:.2f}'}")
                )
            rows.append(cells)
        caption = f"{m['source']}: {m['model']}, trained on {m['train_data']}; {m['metric']}"
        out.append((caption, Table(["method", *m["columns"]], rows, caption=caption)))
    return out


def runs_table(runs: pd.DataFrame) -> Table:
    rows = []
    for r in runs.to_dict("records"):
        knobs = ", ".join(
            f"{k.removeprefix('param_')}={v}"
            for k, v in r.items()
            if k.startswith("param_") and not _isnan(v)
        )
        seed = r.get("seed")
        lr = r.get("learning_rate")
        rows.append(
            [
                Cell(r["run_id"]),
                Cell(str(r.get("method"))),
                Cell("–" if _isnan(r.get("objective")) else str(r["objective"])),
                Cell(knobs or "–"),
                Cell("–" if _isnan(lr) else f"{lr:g}"),
                Cell("–" if _isnan(seed) else str(int(seed))),
                Cell(r["status"], cls="" if r["status"] == "done" else f"status-{r['status']}"),
                Cell("" if _isnan(r.get("error")) else str(r.get("error"))),
            ]
        )
    header = ["run", "method", "objective", "knobs", "lr", "seed", "status", "error"]
    return Table(header, rows, id="runs-table", left=(0, 1, 2, 3, 6, 7))


# ---------------------------------------------------------------------------------------- render
def _section(sid: str, title: str, *blocks: dict[str, Any]) -> dict[str, Any]:
    return {"id": sid, "title": title, "blocks": [b for b in blocks if b]}


def _p(text: str) -> dict[str, Any]:
    return {"type": "p", "text": text}


def _t(table: Table | None, caption: str = "") -> dict[str, Any] | None:
    return None if table is None else {"type": "table", "table": table, "caption": caption or table.caption}


def _sweep_name(sweep_dir: Path) -> str:
    try:
        return str(yaml.safe_load((sweep_dir / "sweep.yaml").read_text()).get("name", sweep_dir.name))
    except (OSError, AttributeError, yaml.YAMLError):
        return sweep_dir.name


def _write_tables(results: pd.DataFrame, out_dir: Path) -> None:
    atomic_write_text(out_dir / "results.csv", results.to_csv(index=False))
    parquet = out_dir / "results.parquet"
    try:
        import pyarrow  # noqa: F401

        tmp = out_dir / ".results.parquet.tmp"
        results.to_parquet(tmp, index=False)
        tmp.replace(parquet)
    except Exception:  # no pyarrow, or a column parquet cannot type: the CSV is the table of record
        parquet.unlink(missing_ok=True)
        (out_dir / ".results.parquet.tmp").unlink(missing_ok=True)


def render(
    sweep_dir: str | Path,
    out_dir: str | Path,
    compare: str | Path | None = None,
    *,
    reference_dir: str | Path | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Path]:
    """Write results.csv (+ .parquet), figures, report.md and report.html into ``out_dir``.

    ``compare``: a second sweep directory shown beside this one (methods matched by name).
    ``reference_dir``: published numbers (default ``evaluation/reference``). Returns the output paths.
    """
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ref_dir = Path(reference_dir) if reference_dir is not None else reference.default_dir()
    results, runs = collect(sweep_dir)
    # Validation-split rows (model selection, e.g. the lr) are never results: set apart here.
    is_val = results["split"].eq("val") if not results.empty else pd.Series(dtype=bool)
    val, results = (results[is_val], results[~is_val]) if not results.empty else (results, results)
    _write_tables(results, out_dir)
    _write_csv(val, out_dir / "validation.csv")
    all_runs = runs
    lr_tuning = tuning.read_tuning(sweep_dir)
    selection = tuning.select(val, runs, lr_tuning) if lr_tuning and not runs.empty else None
    if selection is not None:  # compare each method at its picked lr only
        results, runs = tuning.apply(results, runs, selection)
    _write_csv(selection.table if selection is not None else None, out_dir / "selection.csv")
    name = _sweep_name(sweep_dir)
    methods = list(dict.fromkeys(runs["method"])) if not runs.empty else []
    table = main_table(results, methods) if not results.empty else pd.DataFrame()
    sft = pick_reference(runs, table, "sft")
    base = pick_reference(runs, table, "base")
    # Rows: the base model, SFT, then every other method in plan order.
    methods = [m for m in (base, sft) if m] + [m for m in methods if m not in (base, sft)]
    table = main_table(results, methods) if not results.empty else table
    cmap = plots.colours(methods)
    figures: dict[str, Path | None] = {}
    sections = []

    # Main table and significance
    sig = pd.DataFrame()
    if table.empty:
        sections.append(_section("main", "Main table", _p("No evaluation results yet.")))
    else:
        if sft is not None:
            samples = load_samples(sweep_dir, results)
            sig = significance(samples, sft, [str(m) for m in table["method"].cat.categories], n_boot, seed)
            rank = {t: i for i, (_, _, t) in enumerate(task_order(table))}
            sig = sig.assign(_m=sig["method"].map(methods.index), _t=sig["task"].map(rank))
            sig = sig.sort_values(["_m", "_t"], kind="stable").drop(columns=["_m", "_t"])
        intro = "Scores in %: mean ± sample std over seeds (n = seeds with a result); the best mean per column is bold."
        if sft is not None:
            intro += (
                f" Δ SFT: difference of means vs '{sft}' in percentage points, with the paired bootstrap 95% CI "
                "over questions; * marks a CI that excludes 0."
            )
        if base is not None:
            intro += f" Δ base: difference vs the untrained model ('{base}')."
        if selection is not None:
            intro += " " + _selection_sentence(selection)
        figures["scores"] = plots.plot_scores(table, out_dir, cmap)
        sections.append(
            _section(
                "main",
                "Main table",
                _p(intro),
                _t(main_cells(table, sft, base, sig)),
                _fig(figures, "scores", "Score per task"),
            )
        )
        if sft is not None:
            sections.append(
                _section(
                    "significance",
                    f"Significance vs {sft}",
                    _p(
                        f"Paired bootstrap of (method − {sft}) per task: per question, scores are averaged over "
                        f"each method's seeds; {n_boot} resamples of the questions both answered (numpy "
                        f"Generator, seed {seed}); 95% CI from the 2.5/97.5 percentiles. The CI reflects "
                        "question sampling; seed variance is the std in the main table."
                    ),
                    _t(significance_table(sig, sft)) if not sig.empty else _p("No per-question sample logs."),
                )
            )
        if selection is not None:
            sections.append(_selection_section(selection, val, out_dir, figures))
        matches = reference.match(reference.load(ref_dir), table, runs)
        if matches:
            blocks = [_p("Published / reproduced, in %. Settings differ unless the sweep copies the recipe.")]
            blocks += [_t(t, c) for c, t in reference_tables(matches)]
            sections.append(_section("reference", "Reference numbers", *blocks))

        # Ablations
        refs = {k: v for k, v in (("SFT", sft), ("base", base)) if v is not None}
        figures["score_vs_k"] = plots.plot_axis(
            results, table, out_dir, axis="k", objectives=("otr",), stem="score_vs_k",
            title="Score vs K (number of draws)", xlabel="K (log scale)", log=True, exact="otr_exact", references=refs,
        )  # fmt: skip
        figures["score_vs_tau"] = plots.plot_axis(
            results, table, out_dir, axis="tau", objectives=("otr", "otr_exact"), stem="score_vs_tau",
            title="Score vs sampling temperature tau", xlabel="tau", references=refs,
        )  # fmt: skip
        figures["score_vs_beta"] = plots.plot_axis(
            results, table, out_dir, axis="beta", objectives=("otr",), stem="score_vs_beta",
            title="Score vs beta (squares: beta = 0 at lr0 / (1 − beta))", xlabel="beta", exact="otr_exact", references=refs,
        )  # fmt: skip
        trained = tuple(sorted({o for o in runs["objective"].dropna() if o != "base"}))
        # A tuned sweep draws score vs lr on the validation task (in its selection section), not on test.
        figures["score_vs_lr"] = figures.get("score_vs_lr") if selection is not None else plots.plot_axis(
            results, table, out_dir, axis="learning_rate", objectives=trained, stem="score_vs_lr",
            title="Score vs learning rate, per objective", xlabel="learning rate (log scale)", log=True,
        )  # fmt: skip
        pairs = beta_pairs(results)
        blocks = [
            _fig(figures, "score_vs_k", "Score vs K"),
            _fig(figures, "score_vs_tau", "Score vs tau"),
            _fig(figures, "score_vs_beta", "Score vs beta"),
            _t(pairs, "OTR(β) vs OTR(β = 0) at the learning rate scaled by 1/(1 − β)"),
            None if selection is not None else _fig(figures, "score_vs_lr", "Score vs learning rate"),
        ]
        if any(blocks):
            sections.append(
                _section(
                    "ablations",
                    "Ablations",
                    _p("Drawn when the sweep varies the knob (≥ 2 values); error bars: std over seeds."),
                    *blocks,
                )
            )

    # Training curves and compute
    trained_runs = runs[runs["objective"].fillna("base") != "base"] if not runs.empty else runs
    metrics = load_metrics(sweep_dir, trained_runs) if not trained_runs.empty else pd.DataFrame()
    figures["training_curves"] = plots.plot_training_curves(metrics, out_dir, cmap)
    if figures["training_curves"]:
        sections.append(
            _section("curves", "Training curves", _fig(figures, "training_curves", "Training curves"))
        )
    summaries = load_summaries(sweep_dir, trained_runs) if not trained_runs.empty else pd.DataFrame()
    if not summaries.empty:
        figures["compute"] = plots.plot_compute(summaries, out_dir, cmap)
        figures["score_vs_compute"] = plots.plot_score_vs_compute(results, summaries, out_dir, cmap)
        sections.append(
            _section(
                "compute",
                "Compute",
                _p("From each run's train/summary.json; mean ± std over seeds."),
                _t(compute_table(summaries, sft)),
                _fig(figures, "compute", "Compute per method"),
                _fig(figures, "score_vs_compute", "Score vs compute"),
            )
        )

    # Forgetting
    forget = forgetting(table, base)
    if not forget.empty:
        figures["forgetting"] = plots.plot_forgetting(forget, out_dir, cmap)
        sections.append(
            _section(
                "forgetting",
                "Forgetting",
                _p(
                    f"Change vs the base model ('{base}') on the non-target tasks (split OOD), in percentage "
                    "points: mean over seeds ± the method's std; negative = below the base model."
                ),
                _t(forgetting_table(forget)),
                _fig(figures, "forgetting", "Forgetting"),
            )
        )

    # Example generations
    examples = (
        example_generations(sweep_dir, results, [str(m) for m in table["method"].cat.categories])
        if not table.empty
        else []
    )
    if examples:
        sections.append(
            _section(
                "examples",
                "Example generations",
                _p(
                    "The first questions of the first in-domain task; each method's first seed. Raw model output."
                ),
                {"type": "examples", "examples": examples, "md": _examples_md(examples)},
            )
        )

    # Comparison with another sweep
    if compare is not None:
        compare = Path(compare)
        other_results, other_runs = collect(compare)
        other_methods = list(dict.fromkeys(other_runs["method"])) if not other_runs.empty else []
        other_table = main_table(other_results, other_methods) if not other_results.empty else pd.DataFrame()
        other_name = _sweep_name(compare)
        cmp = compare_table(table, other_table, name, other_name)
        sections.append(
            _section(
                "compare",
                f"Comparison with {other_name}",
                _p(f"This sweep ({name}) vs {other_name} ({compare}): scores in %, methods matched by name."),
                _t(cmp) if cmp else _p("No method and task in common."),
            )
        )

    # Runs: every run of the sweep, also the learning rates a tuned method was not picked at
    runs = all_runs
    not_done = runs[runs["status"] != "done"] if not runs.empty else runs
    blocks = []
    if not not_done.empty:
        blocks.append(
            _p(
                f"{len(not_done)} run(s) not done: "
                + ", ".join(f"{r.run_id} ({r.status})" for r in not_done.itertuples())
            )
        )
    stale = stale_run_dirs(Path(sweep_dir))
    if stale:
        blocks.append(
            _p(
                f"Left out: {len(stale)} run director{'y' if len(stale) == 1 else 'ies'} below the sweep "
                "directory that the current plan does not list (made by an earlier version of the sweep "
                "file or of the toy world): " + ", ".join(p.name for p in stale)
            )
        )
    blocks.append(_t(runs_table(runs)) if not runs.empty else _p("No runs."))
    sections.append(_section("runs", "Runs", *blocks))

    for stem in plots.PLOT_STEMS:  # a figure that no longer applies must not linger from an earlier render
        if not figures.get(stem):
            for ext in ("png", "svg"):
                (out_dir / f"{stem}.{ext}").unlink(missing_ok=True)

    n_done = int((runs["status"] == "done").sum()) if not runs.empty else 0
    context = {
        "name": name,
        "sweep_dir": str(sweep_dir),
        "n_runs": len(runs),
        "n_done": n_done,
        "sections": sections,
    }
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = _md_text
    md = env.get_template("report.md.j2").render(**context)
    atomic_write_text(out_dir / "report.md", re.sub(r"\n{3,}", "\n\n", md))
    images = {stem: base64.b64encode(p.read_bytes()).decode() for stem, p in figures.items() if p}
    html = env.get_template("report.html.j2").render(**context, images=images)
    atomic_write_text(out_dir / "report.html", html)
    return {"csv": out_dir / "results.csv", "md": out_dir / "report.md", "html": out_dir / "report.html"}


def _write_csv(df: pd.DataFrame | None, path: Path) -> None:
    """A side table (validation rows, the lr selection); removed when this sweep has none."""
    if df is None or df.empty:
        path.unlink(missing_ok=True)
    else:
        atomic_write_text(path, df.to_csv(index=False))


def _lr(x: float) -> str:
    return f"{x:g}"


def _selection_sentence(sel: tuning.Selection) -> str:
    picked = ", ".join(f"{g} at lr {_lr(lr)}" for g, lr in sel.chosen.items()) or "none yet"
    return (
        f"Each method is shown at its own learning rate, picked on the validation task {sel.suite}/{sel.task} "
        f"({'highest' if sel.mode == 'max' else 'lowest'} mean over seeds of {sel.metric or 'its primary metric'}; "
        f"see Learning-rate selection): {picked}. Validation scores are not results and appear only there."
    )


def _selection_section(
    sel: tuning.Selection, val: pd.DataFrame, out_dir: Path, figures: dict[str, Path | None]
) -> dict[str, Any]:
    """The lr grid per method on the validation task, the picked lr bold, and the validation curves."""
    lrs = sel.learning_rates
    by = {(r.group, r.learning_rate): r for r in sel.table.itertuples()}
    rows = []
    for g in [*sel.chosen, *sel.unselected]:
        cells = [Cell(g)]
        for lr in lrs:
            r = next((v for (gg, x), v in by.items() if gg == g and math.isclose(x, lr, rel_tol=1e-9)), None)
            cells.append(
                Cell("–") if r is None else Cell(fmt_score(r.mean, r.std, r.n), bold=bool(r.selected))
            )
        cells.append(Cell(_lr(sel.chosen[g]) if g in sel.chosen else "not selected (no validation result)"))
        rows.append(cells)
    table = Table(["method", *(f"lr {_lr(x)}" for x in lrs), "picked lr"], rows, id="lr-selection-table")
    figures["score_vs_lr"] = plots.plot_axis(
        val, pd.DataFrame(), out_dir, axis="learning_rate",
        objectives=tuple(sorted({o for o in val["objective"].dropna()})) if not val.empty else (),
        stem="score_vs_lr", title="Validation score vs learning rate (selection)",
        xlabel="learning rate (log scale)", log=True,
    )  # fmt: skip
    text = (
        f"Per method, the mean over seeds (± sample std, n seeds) of {sel.metric or 'the primary metric'} on "
        f"the validation task {sel.suite}/{sel.task} at each learning rate of the grid; the picked one is bold "
        f"({'highest' if sel.mode == 'max' else 'lowest'} mean; a tie goes to the lr listed first). Every other "
        "table and figure shows each method at its picked learning rate, on the test tasks only."
    )
    return _section(
        "lr-selection",
        "Learning-rate selection",
        _p(text),
        _t(table),
        _fig(figures, "score_vs_lr", "Validation score vs learning rate"),
    )


def _fig(figures: dict[str, Path | None], stem: str, title: str) -> dict[str, Any] | None:
    path = figures.get(stem)
    return {"type": "figure", "stem": stem, "file": path.name, "title": title} if path else None


def _examples_md(examples: list[dict[str, Any]]) -> str:
    out = []
    for ex in examples:
        out.append(f"**{_md_text(ex['task'])}, document {_md_text(ex['doc_id'])}**\n")
        out.append("Prompt:\n\n" + _fence(ex["prompt"]) + "\n")
        out.append("Target:\n\n" + _fence(ex["target"]) + "\n")
        for r in ex["responses"]:
            seed = "" if r["seed"] is None else f", seed {r['seed']}"
            out.append(
                f"*{_md_text(r['method'])}*{seed} — extracted `{_md_text(r['extracted']).replace('`', '')}`, "
                f"score {r['score']:g}:\n\n" + _fence(r["response"]) + "\n"
            )
    return "\n".join(out)
