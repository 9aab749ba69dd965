"""Assemble the report: tables and figures from the tidy table, rendered to Markdown and HTML.

``render(sweep_dir, out_dir)`` writes ``results.csv`` (+ ``results.parquet`` when pyarrow is there), the
figures (PNG + SVG), ``report.md`` (images beside it) and ``report.html`` (one self-contained file: images
embedded as data URIs, a table of contents). Nothing in the outputs depends on the time or the machine, so
rendering twice gives byte-identical files. Every string that comes from a run (method names, errors,
model generations) is escaped: by jinja2's autoescape in HTML, and in Markdown by escaping table cells and
putting generations in code fences.

A run file that does not read back (``harness.runs.integrity``) is never averaged around: the report opens
with an "Unreadable runs" section naming each such file and why, and ``render``'s result lists them
(``Rendered.unreadable``) so that the command can say so on stderr and exit non-zero.

``render`` is a recipe of named phases, each reading only what the phases before produced:

1. ``gather``: the run directories as frames, validation rows apart, the lr selection (``data``);
2. ``_write_tables``: results.csv (+ parquet), validation.csv, selection.csv;
3. ``compute``: every table and statistic, the main table once (``data``);
4. ``_draw_figures``: PNG + SVG; a figure that no longer applies is removed;
5. ``_sections``: the sections, in report order (``sections``);
6. ``_write_documents``: report.md and report.html from the templates.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import jinja2
import pandas as pd

from harness.report import plots, reference, sections
from harness.report.data import Collected, Computed, compute, gather
from harness.report.markup import md_text
from harness.report.sections import Figures, Section
from harness.report.stats import N_BOOT
from harness.runs.io import atomic_write_text, remove_stale_temps
from harness.runs.layout import REPORT_FILES

TEMPLATES = Path(__file__).resolve().parent.parent / "report_templates"


class Rendered(dict[str, Path]):
    """The output paths (keys ``csv``, ``md``, ``html``) and ``unreadable``: one line per run file that did
    not read back (this sweep's and a compared sweep's), empty when every file read back."""

    unreadable: list[str]


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
    ``reference_dir``: published numbers (default ``evaluation/reference``). Returns the output paths
    (keys ``csv``, ``md``, ``html``) with the unreadable files (``Rendered``).
    """
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir, recursive=False)  # what a render killed between write and rename left
    ref_dir = Path(reference_dir) if reference_dir is not None else reference.default_dir()
    compare = Path(compare) if compare is not None else None

    collected = gather(sweep_dir)
    _write_tables(collected, out_dir)
    computed = compute(collected, sweep_dir, ref_dir=ref_dir, compare=compare, n_boot=n_boot, seed=seed)
    figures = _draw_figures(collected, computed, out_dir)
    report_sections = _sections(collected, computed, figures, n_boot=n_boot, seed=seed)
    _write_documents(collected, sweep_dir, report_sections, figures, out_dir)
    rendered = Rendered({key: out_dir / REPORT_FILES[key] for key in ("csv", "md", "html")})
    rendered.unreadable = _unreadable(collected, computed)
    return rendered


def _unreadable(c: Collected, k: Computed) -> list[str]:
    return c.unreadable + (k.comparison.unreadable if k.comparison is not None else [])


# ----------------------------------------------------------------------------------- 2. tables
def _write_tables(c: Collected, out_dir: Path) -> None:
    """results.csv (+ parquet) with every run's test rows, and the side tables of this sweep."""
    atomic_write_text(out_dir / REPORT_FILES["csv"], c.all_results.to_csv(index=False))
    _write_parquet(c.all_results, out_dir)
    _write_csv(c.val, out_dir / REPORT_FILES["validation"])
    _write_csv(c.selection.table if c.selection is not None else None, out_dir / REPORT_FILES["selection"])


def _write_parquet(results: pd.DataFrame, out_dir: Path) -> None:
    """A parquet copy of results.csv when pyarrow can write it; otherwise none (no stale copy either)."""
    parquet = out_dir / REPORT_FILES["parquet"]
    tmp = out_dir / f".{REPORT_FILES['parquet']}.tmp"
    try:
        import pyarrow  # noqa: F401

        results.to_parquet(tmp, index=False)
        tmp.replace(parquet)
    except Exception:  # no pyarrow, or a column parquet cannot type: the CSV is the table of record
        parquet.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _write_csv(df: pd.DataFrame | None, path: Path) -> None:
    """A side table (validation rows, the lr selection); removed when this sweep has none."""
    if df is None or df.empty:
        path.unlink(missing_ok=True)
    else:
        atomic_write_text(path, df.to_csv(index=False))


# ---------------------------------------------------------------------------------- 4. figures
def _draw_figures(c: Collected, k: Computed, out_dir: Path) -> Figures:
    """Every figure that applies (stem -> PNG path, None when there was nothing to draw)."""
    cmap = plots.colours(k.methods)
    figures: Figures = {}
    if not k.table.empty:
        figures["scores"] = plots.plot_scores(k.table, out_dir, cmap)
        if c.selection is not None:  # a tuned sweep: score vs lr on the validation task, not on test
            figures["score_vs_lr"] = plots.plot_axis(
                c.val, pd.DataFrame(), out_dir, axis="learning_rate",
                objectives=tuple(sorted({o for o in c.val["objective"].dropna()})) if not c.val.empty else (),
                stem="score_vs_lr", title="Validation score vs learning rate (selection)",
                xlabel="learning rate (log scale)", log=True,
            )  # fmt: skip
        figures.update(_ablation_figures(c, k, out_dir))
    figures["training_curves"] = plots.plot_training_curves(k.metrics, out_dir, cmap)
    if not k.summaries.empty:
        figures["compute"] = plots.plot_compute(k.summaries, out_dir, cmap)
        figures["score_vs_compute"] = plots.plot_score_vs_compute(c.results, k.summaries, out_dir, cmap)
    if not k.forget.empty:
        figures["forgetting"] = plots.plot_forgetting(k.forget, out_dir, cmap)
    for stem in plots.PLOT_STEMS:  # a figure that no longer applies must not linger from an earlier render
        if not figures.get(stem):
            for ext in ("png", "svg"):
                (out_dir / f"{stem}.{ext}").unlink(missing_ok=True)
    return figures


def _ablation_figures(c: Collected, k: Computed, out_dir: Path) -> Figures:
    """Score vs K, tau, beta (and vs lr in an untuned sweep), drawn when the sweep varies the knob."""
    results, table = c.results, k.table
    refs = {name: m for name, m in (("SFT", k.sft), ("base", k.base)) if m is not None}
    figures: Figures = {}
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
    if c.selection is None:
        trained = tuple(sorted({o for o in c.runs["objective"].dropna() if o != "base"}))
        figures["score_vs_lr"] = plots.plot_axis(
            results, table, out_dir, axis="learning_rate", objectives=trained, stem="score_vs_lr",
            title="Score vs learning rate, per objective", xlabel="learning rate (log scale)", log=True,
        )  # fmt: skip
    return figures


# --------------------------------------------------------------------------------- 5. sections
def _sections(c: Collected, k: Computed, figures: Figures, *, n_boot: int, seed: int) -> list[Section]:
    """The report's sections in order; a section that does not apply to this sweep is left out."""
    first = [sections.unreadable(_unreadable(c, k))]
    if k.table.empty:
        scored = [sections.no_results()]
    else:
        scored = [
            sections.main(k.table, k.sft, k.base, k.sig, c.selection, figures),
            sections.significance(k.sig, k.sft, n_boot, seed),
            sections.lr_selection(c.selection, figures),
            sections.reference_numbers(k.matches),
            sections.ablations(c.results, c.selection is not None, figures),
        ]
    rest = [
        sections.curves(figures),
        sections.compute(k.summaries, k.sft, figures),
        sections.forgetting(k.forget, k.base, figures),
        sections.examples(k.examples),
        sections.code_execution(c.results),
        sections.comparison(k.table, c.name, k.comparison),
        sections.runs(c.all_runs, c.stale),
    ]
    return [s for s in [*first, *scored, *rest] if s is not None]


# -------------------------------------------------------------------------------- 6. documents
def _write_documents(
    c: Collected, sweep_dir: Path, report_sections: list[Section], figures: Figures, out_dir: Path
) -> None:
    """report.md (figures beside it) and report.html (figures embedded) from the same sections."""
    runs = c.all_runs
    context = {
        "name": c.name,
        "sweep_dir": str(sweep_dir),
        "n_runs": len(runs),
        "n_done": int((runs["status"] == "done").sum()) if not runs.empty else 0,
        "sections": report_sections,
    }
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = md_text
    md = env.get_template(_template("md")).render(**context)
    atomic_write_text(out_dir / REPORT_FILES["md"], re.sub(r"\n{3,}", "\n\n", md))
    images = {stem: base64.b64encode(p.read_bytes()).decode() for stem, p in figures.items() if p}
    html = env.get_template(_template("html")).render(**context, images=images)
    atomic_write_text(out_dir / REPORT_FILES["html"], html)


def _template(kind: str) -> str:
    """The template of a document is named after it: ``report.md.j2`` renders ``report.md``."""
    return f"{REPORT_FILES[kind]}.j2"
