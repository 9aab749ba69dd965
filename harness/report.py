"""Reports: aggregate a sweep's run directories into a tidy table, then render Markdown and HTML.

A pure function of the run directories (``collect``) and of the tidy table (everything after it):
``results.csv`` holds one row per (run, task) with the run's method, seed and every knob, the task's
domain and split, the metric, its value, stderr and n. The main table is method × task, mean ± std over
seeds. Plots are matplotlib PNG + SVG; the HTML report embeds the PNGs, so it is one self-contained file.
Every string that comes from a run (names, configs, model outputs) is HTML-escaped by jinja2's autoescape.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import yaml

from harness.rundir import RunDir, atomic_write_text, read_jsonl

SPLIT_NAMES = {"id": "in-domain", "ood": "OOD"}


# --------------------------------------------------------------------------------------- collect
def collect(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every run directory below ``sweep_dir``.

    Returns ``(results, runs)``: the tidy results table (one row per run × task) and one row per run with
    its status, so a partial sweep reports what is pending or failed instead of crashing.
    """
    sweep_dir = Path(sweep_dir)
    order = _planned_order(sweep_dir)
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for run_path in sorted(p.parent for p in sweep_dir.glob("*/config.yaml")):
        run = RunDir(run_path)
        cfg = yaml.safe_load(run.config_file.read_text())
        meta = json.loads((run_path / "meta.json").read_text()) if (run_path / "meta.json").exists() else {}
        objective = cfg.get("objective") or {}
        is_base = not objective
        stages = ("eval",) if is_base else ("train", "eval")
        info = {
            "run_id": run.run_id,
            "variant": meta.get("variant", "base" if is_base else objective.get("name", "?")),
            "objective": objective.get("name", "base"),
            "seed": None if is_base else cfg.get("seed"),
            "learning_rate": None if is_base else (cfg.get("training") or {}).get("learning_rate"),
            **{f"param_{k}": v for k, v in objective.items() if k != "name"},
        }
        runs.append({**info, "status": run.status(stages), "order": order.get(run.run_id, len(order))})
        for results_file in sorted(run_path.glob("eval/*/results.json")):
            res = json.loads(results_file.read_text())
            for task, r in res["tasks"].items():
                rows.append(
                    {
                        **info,
                        "suite": res["suite"],
                        "task": task,
                        "domain": r["domain"],
                        "split": r["split"],
                        "metric": r["metric"],
                        "value": r["value"],
                        "stderr": r["stderr"],
                        "n": r["n"],
                    }
                )
    runs_df = pd.DataFrame(runs)
    if not runs_df.empty:
        runs_df = runs_df.sort_values(["order", "run_id"]).drop(columns="order").reset_index(drop=True)
    return pd.DataFrame(rows), runs_df


def _planned_order(sweep_dir: Path) -> dict[str, int]:
    plan = sweep_dir / "plan.json"
    if not plan.exists():
        return {}
    return {run_id: i for i, run_id in enumerate(json.loads(plan.read_text())["runs"])}


# ------------------------------------------------------------------------------------ statistics
def main_table(results: pd.DataFrame, variant_order: list[str]) -> pd.DataFrame:
    """Variant × task: mean, std (ddof=1; NaN for one seed) and n seeds of the primary metric."""
    grouped = results.groupby(["variant", "domain", "split", "task"], sort=False)["value"]
    table = grouped.agg(mean="mean", std="std", n="count").reset_index()
    table["variant"] = pd.Categorical(table["variant"], categories=variant_order, ordered=True)
    return table.sort_values(["variant", "domain", "split", "task"]).reset_index(drop=True)


def _fmt(mean: float, std: float, n: int) -> str:
    pct = f"{100 * mean:.1f}"
    if n > 1 and not math.isnan(std):
        pct += f" ± {100 * std:.1f}"
    return f"{pct} (n={n})"


def wide_table(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table as strings: one column per task, best mean per column in bold."""
    tasks = list(dict.fromkeys(table["task"]))
    split_of = dict(zip(table["task"], table["split"], strict=False))
    header = ["method", *(f"{t} ({SPLIT_NAMES.get(split_of[t], split_of[t])})" for t in tasks)]
    best = table.groupby("task")["mean"].max()
    rows = []
    for variant, sub in table.groupby("variant", sort=True, observed=True):
        cells = [str(variant)]
        by_task = {r.task: r for r in sub.itertuples()}
        for t in tasks:
            r = by_task.get(t)
            if r is None:
                cells.append("–")
                continue
            cell = _fmt(r.mean, r.std, r.n)
            cells.append(f"**{cell}**" if r.mean == best[t] else cell)
        rows.append(cells)
    return header, rows


# ------------------------------------------------------------------------------------------ plots
def _save(fig, out_dir: Path, stem: str) -> Path:
    """PNG (embedded in HTML, linked from Markdown) and SVG, both byte-stable across re-renders."""
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=120, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(out_dir / f"{stem}.svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    return png


def plot_scores(table: pd.DataFrame, out_dir: Path) -> Path:
    """Grouped bars: accuracy per task, one bar per method, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "otr-harness"  # stable SVG ids: re-rendering is idempotent
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(table["task"]))
    variants = [v for v in table["variant"].cat.categories if v in set(table["variant"])]
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(tasks), 3.6))
    for i, v in enumerate(variants):
        sub = table[table["variant"] == v].set_index("task").reindex(tasks)
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(tasks))]
        ax.bar(xs, 100 * sub["mean"], width, yerr=100 * sub["std"].fillna(0), capsize=3, label=str(v))
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Score per task (mean ± std over seeds)")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    path = _save(fig, out_dir, "scores")
    plt.close(fig)
    return path


def plot_training_curves(sweep_dir: Path, runs: pd.DataFrame, out_dir: Path) -> Path | None:
    """Training loss and token accuracy vs step, one line per run, coloured by method."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "otr-harness"
    import matplotlib.pyplot as plt

    curves = []
    for r in runs.itertuples():
        rows = read_jsonl(RunDir(sweep_dir / r.run_id).metrics_file)
        if rows:
            curves.append((r.variant, r.seed, pd.DataFrame(rows)))
    if not curves:
        return None
    keys = [k for k in ("loss", "token_acc", "p_gt", "entropy") if any(k in c.columns for _, _, c in curves)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.0), squeeze=False)
    colours = {v: f"C{i}" for i, v in enumerate(dict.fromkeys(v for v, _, _ in curves))}
    for ax, key in zip(axes[0], keys, strict=True):
        for variant, seed, df in curves:
            if key in df.columns:
                ax.plot(
                    df["step"], df[key], color=colours[variant], alpha=0.8, lw=1.2, label=f"{variant} s{seed}"
                )
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, frameon=False)
    path = _save(fig, out_dir, "training_curves")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------- render
def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(sweep_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write results.csv, plots, report.md and report.html into ``out_dir``. Returns their paths."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, runs = collect(sweep_dir)
    atomic_write_text(out_dir / "results.csv", results.to_csv(index=False))
    name = sweep_dir.name
    if (sweep_dir / "sweep.yaml").exists():
        name = yaml.safe_load((sweep_dir / "sweep.yaml").read_text()).get("name", name)

    variant_order = list(dict.fromkeys(runs["variant"])) if not runs.empty else []
    header: list[str] = []
    rows: list[list[str]] = []
    plots: list[tuple[str, Path]] = []
    if not results.empty:
        table = main_table(results, variant_order)
        header, rows = wide_table(table)
        plots.append(("Scores", plot_scores(table, out_dir)))
    curves = plot_training_curves(sweep_dir, runs, out_dir) if not runs.empty else None
    if curves:
        plots.append(("Training curves", curves))

    not_done = runs[runs["status"] != "done"] if not runs.empty else runs
    context = {
        "name": name,
        "sweep_dir": str(sweep_dir),
        "n_runs": len(runs),
        "n_done": int((runs["status"] == "done").sum()) if not runs.empty else 0,
        "header": header,
        "rows": rows,
        "not_done": _records(not_done),
        "runs": _records(runs),
    }
    md = _MD.render(
        **context, table=_md_table(header, rows) if rows else "", plots=[(t, p.name) for t, p in plots]
    )
    atomic_write_text(out_dir / "report.md", md)

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    embedded = [(t, base64.b64encode(p.read_bytes()).decode()) for t, p in plots]
    html = env.from_string(_HTML).render(**context, plots=embedded, bold=_bold_cells(rows))
    atomic_write_text(out_dir / "report.html", html)
    return {"csv": out_dir / "results.csv", "md": out_dir / "report.md", "html": out_dir / "report.html"}


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with pandas' NaN turned back into None (the base model has no seed)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in df.to_dict("records")
    ]


def _bold_cells(rows: list[list[str]]) -> list[list[tuple[str, bool]]]:
    """Split Markdown bold markers out of cells so HTML can render them without trusting the text."""
    return [
        [(c[2:-2], True) if c.startswith("**") and c.endswith("**") else (c, False) for c in r] for r in rows
    ]


_MD = jinja2.Template(
    """# Sweep report: {{ name }}

Runs: {{ n_done }} of {{ n_runs }} done (`{{ sweep_dir }}`).
Scores are accuracy in %, mean ± std over seeds (n = number of seeds); the best mean per column is bold.

{{ table if table else "_No evaluation results yet._" }}
{% for title, file in plots %}
## {{ title }}

![{{ title }}]({{ file }})
{% endfor %}
{% if not_done %}
## Runs not done

| run | status |
|---|---|
{% for r in not_done %}| {{ r.run_id }} | {{ r.status }} |
{% endfor %}{% endif %}
""",
    trim_blocks=False,
)

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sweep report: {{ name }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.35em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%}nav li{margin:.2em 0}.muted{color:#666}
</style></head><body>
<h1>Sweep report: {{ name }}</h1>
<p class="muted">Runs: {{ n_done }} of {{ n_runs }} done (<code>{{ sweep_dir }}</code>).
Scores are accuracy in %, mean ± std over seeds (n = number of seeds); the best mean per column is bold.</p>
<nav><h2>Contents</h2><ul><li><a href="#main">Main table</a></li>
{% for title, _ in plots %}<li><a href="#plot{{ loop.index }}">{{ title }}</a></li>{% endfor %}
<li><a href="#runs">Runs</a></li></ul></nav>
<h2 id="main">Main table</h2>
{% if header %}<table id="main-table"><thead><tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row in bold %}<tr>{% for cell, b in row %}<td>{% if b %}<b>{{ cell }}</b>{% else %}{{ cell }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>{% else %}<p><em>No evaluation results yet.</em></p>{% endif %}
{% for title, data in plots %}<h2 id="plot{{ loop.index }}">{{ title }}</h2>
<img alt="{{ title }}" src="data:image/png;base64,{{ data }}">
{% endfor %}
<h2 id="runs">Runs</h2>
<table><thead><tr><th>run</th><th>variant</th><th>objective</th><th>seed</th><th>status</th></tr></thead><tbody>
{% for r in runs %}<tr><td>{{ r.run_id }}</td><td>{{ r.variant }}</td><td>{{ r.objective }}</td><td>{{ "–" if r.seed is none else r.seed|int }}</td><td>{{ r.status }}</td></tr>
{% endfor %}</tbody></table>
</body></html>
"""
