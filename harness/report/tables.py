"""Every table of the report, built from the tidy frames (``collect``, ``stats``, ``tuning``) as ``Table``s.

Pure functions of data frames: no file is read here. Scores are in % (``markup.pct``), differences in
percentage points (``markup.pp``); the best mean of a column is bold; "–" marks a missing value.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from harness.report import plots
from harness.report.markup import Cell, Table, fmt_lr, fmt_score, isnan, num, pct, pp
from harness.report.stats import deltas, task_order
from harness.report.tuning import Selection

SPLIT_NAMES = {"id": "in-domain", "ood": "OOD"}


# ---------------------------------------------------------------------------------- main table
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
            if d_sft is not None and method != sft and not isnan(d_sft.get((method, t))):
                line, cls = f"Δ SFT {pp(d_sft[(method, t)])}", "delta"
                c = ci.get((method, t))
                if c is not None:
                    line += f" [{pp(c.lo)}, {pp(c.hi)}]" + ("*" if c.significant else "")
                    cls = ("sig-pos" if c.lo > 0 else "sig-neg") if c.significant else "delta"
                cell.sub.append((line, cls))
            if d_base is not None and method != base and not isnan(d_base.get((method, t))):
                cell.sub.append((f"Δ base {pp(d_base[(method, t)])}", "delta"))
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
            Cell(pp(r.delta)),
            Cell(f"[{pp(r.lo)}, {pp(r.hi)}]"),
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
        ("generated_tokens", "generated tokens"),
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
                cells.append(Cell(f"{num(v.mean())} ± {num(v.std())}"))
            else:
                cells.append(Cell(num(v.mean())))
        rel = wall.get(m) / ref if ref and not isnan(wall.get(m)) else None
        cells.append(Cell("–" if rel is None else f"{rel:.2f}×"))
        rows.append(cells)
    header = ["method", "runs", *(t for _, t in fields), f"wall time / {sft}" if sft else "wall time / SFT"]
    return Table(header, rows, id="compute-table")


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
            txt = pp(r.delta) + (f" ± {pct(r.std)}" if r.n > 1 and not isnan(r.std) else "")
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
                    Cell(pp(a.mean - b.mean)),
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
                    f"{pct(x.mean)} vs {pct(y.mean)}",
                    sub=[(f"Δ {pp(x.mean - y.mean)} (n={x.n} / {y.n})", "delta")],
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
            f"{k.removeprefix('param_')}={v}" for k, v in r.items() if k.startswith("param_") and not isnan(v)
        )
        seed = r.get("seed")
        lr = r.get("learning_rate")
        rows.append(
            [
                Cell(r["run_id"]),
                Cell(str(r.get("method"))),
                Cell("–" if isnan(r.get("objective")) else str(r["objective"])),
                Cell(knobs or "–"),
                Cell("–" if isnan(lr) else f"{lr:g}"),
                Cell("–" if isnan(seed) else str(int(seed))),
                Cell(r["status"], cls="" if r["status"] == "done" else f"status-{r['status']}"),
                Cell("" if isnan(r.get("error")) else str(r.get("error"))),
            ]
        )
    header = ["run", "method", "objective", "knobs", "lr", "seed", "status", "error"]
    return Table(header, rows, id="runs-table", left=(0, 1, 2, 3, 6, 7))


def selection_table(sel: Selection) -> Table:
    """Per tuned method, its mean on the validation task at each lr of the grid; the picked one bold."""
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
        cells.append(
            Cell(fmt_lr(sel.chosen[g]) if g in sel.chosen else "not selected (no validation result)")
        )
        rows.append(cells)
    return Table(["method", *(f"lr {fmt_lr(x)}" for x in lrs), "picked lr"], rows, id="lr-selection-table")
