"""Reports: aggregate a sweep's run directories into a tidy table, then tables, statistics and figures,
rendered as Markdown (``report.md``, images beside it) and one self-contained HTML file (``report.html``).

A pure function of the run directories (``collect``, the only reader) and of the tidy table (everything
after it). Modules, in the order ``render`` uses them:

* ``collect``  run directories -> tidy tables (the only module that reads a run directory);
* ``tuning``   the per-method learning-rate selection of an lr-tuned sweep;
* ``stats``    seeds, the main table, paired bootstrap, forgetting;
* ``reference`` published numbers beside the reproduced ones;
* ``data``     phases 1-2 of ``render``: gather the frames, compute every table and statistic once;
* ``markup``   the table model (``Cell``, ``Table``), Markdown escaping, number formats;
* ``tables``   every table of the report as a ``Table``;
* ``plots``    matplotlib figures;
* ``sections`` the report's sections (blocks of text, tables, figures);
* ``render``   the recipe: gather -> write tables -> compute -> figures -> sections -> documents.
"""

from harness.report.collect import collect, load_samples
from harness.report.markup import fmt_score
from harness.report.render import render
from harness.report.stats import deltas, main_table, paired_bootstrap, per_question, significance
from harness.report.tables import main_cells, wide_table

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
