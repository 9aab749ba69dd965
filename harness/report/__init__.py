"""Reports: aggregate a sweep's run directories into a tidy table, then tables, statistics and figures,
rendered as Markdown (``report.md``, images beside it) and one self-contained HTML file (``report.html``).

A pure function of the run directories (``collect``, the only reader) and of the tidy table (everything
after it). Modules: ``collect`` (run directories -> tables), ``stats`` (seeds, paired bootstrap),
``plots`` (matplotlib figures), ``reference`` (published numbers), ``render`` (Markdown and HTML).
"""

from harness.report.collect import collect, load_samples
from harness.report.render import fmt_score, main_cells, render, wide_table
from harness.report.stats import deltas, main_table, paired_bootstrap, per_question, significance

__all__ = [
    "collect",
    "deltas",
    "fmt_score",
    "load_samples",
    "main_cells",
    "main_table",
    "paired_bootstrap",
    "per_question",
    "render",
    "significance",
    "wide_table",
]
