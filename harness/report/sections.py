"""The sections of the report: each a function of tables and figures that returns one section, or None
when it does not apply to this sweep.

A section is ``{"id", "title", "blocks"}``; a block is a paragraph (``p``), a table (``t``), a figure
(``fig``: present only when the figure was drawn) or the example generations. Both templates
(``report_templates/report.{md,html}.j2``) render the same list, so Markdown and HTML cannot disagree.
Paragraph text is plain: the templates escape it (``markup.md_text`` / jinja2's autoescape).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from harness.report import tuning
from harness.report.data import Comparison
from harness.report.markup import Table, fence, fmt_lr, md_text
from harness.report.plots import generates
from harness.report.tables import (
    beta_pairs,
    compare_table,
    compute_table,
    forgetting_table,
    main_cells,
    reference_tables,
    runs_table,
    selection_table,
    significance_table,
)

Block = dict[str, Any]
Section = dict[str, Any]
Figures = dict[str, Path | None]


# -------------------------------------------------------------------------------------- blocks
def section(sid: str, title: str, *blocks: Block | None) -> Section:
    """A section with the blocks that apply (a None block, e.g. a figure not drawn, is left out)."""
    return {"id": sid, "title": title, "blocks": [b for b in blocks if b]}


def p(text: str) -> Block:
    return {"type": "p", "text": text}


def t(table: Table | None, caption: str = "") -> Block | None:
    return None if table is None else {"type": "table", "table": table, "caption": caption or table.caption}


def fig(figures: Figures, stem: str, title: str) -> Block | None:
    path = figures.get(stem)
    return {"type": "figure", "stem": stem, "file": path.name, "title": title} if path else None


# ---------------------------------------------------------------------------------- unreadable
def unreadable(lines: list[str]) -> Section | None:
    """First in the report when any run's files did not read back: each file and why. Those files
    contribute nothing to any table or mean below (``collect``); ``sweep run`` redoes their stages."""
    if not lines:
        return None
    runs = sorted({line.split(" [", 1)[0] for line in lines})
    return section(
        "unreadable",
        "Unreadable runs",
        p(
            f"{len(runs)} run(s) have files that do not read back (cut off, missing or not valid JSON); what "
            "they hold is left out of every table and mean below, so those means have fewer seeds than "
            "planned. Run 'otr-harness sweep run' on the sweep file to redo those stages (the damaged files "
            "are moved aside into <run>/corrupt/), then report again."
        ),
        *[p(line) for line in lines],
    )


# ------------------------------------------------------------------------------------- results
def no_results() -> Section:
    return section("main", "Main table", p("No evaluation results yet."))


def main(
    table: pd.DataFrame,
    sft: str | None,
    base: str | None,
    sig: pd.DataFrame,
    selection: tuning.Selection | None,
    figures: Figures,
) -> Section:
    """The main table (scores, deltas vs SFT with their CI, deltas vs base) and the score figure."""
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
    return section(
        "main",
        "Main table",
        p(intro),
        t(main_cells(table, sft, base, sig)),
        fig(figures, "scores", "Score per task"),
    )


def significance(sig: pd.DataFrame, sft: str | None, n_boot: int, seed: int) -> Section | None:
    if sft is None:
        return None
    return section(
        "significance",
        f"Significance vs {sft}",
        p(
            f"Paired bootstrap of (method − {sft}) per task: per question, scores are averaged over "
            f"each method's seeds; {n_boot} resamples of the questions both answered (numpy "
            f"Generator, seed {seed}); 95% CI from the 2.5/97.5 percentiles. The CI reflects "
            "question sampling; seed variance is the std in the main table."
        ),
        t(significance_table(sig, sft)) if not sig.empty else p("No per-question sample logs."),
    )


def _selection_sentence(sel: tuning.Selection) -> str:
    picked = ", ".join(f"{g} at lr {fmt_lr(lr)}" for g, lr in sel.chosen.items()) or "none yet"
    return (
        f"Each method is shown at its own learning rate, picked on the validation task {sel.suite}/{sel.task} "
        f"({'highest' if sel.mode == 'max' else 'lowest'} mean over seeds of {sel.metric or 'its primary metric'}; "
        f"see Learning-rate selection): {picked}. Validation scores are not results and appear only there."
    )


def lr_selection(sel: tuning.Selection | None, figures: Figures) -> Section | None:
    """The lr grid per method on the validation task, the picked lr bold, and the validation curves."""
    if sel is None:
        return None
    text = (
        f"Per method, the mean over seeds (± sample std, n seeds) of {sel.metric or 'the primary metric'} on "
        f"the validation task {sel.suite}/{sel.task} at each learning rate of the grid; the picked one is bold "
        f"({'highest' if sel.mode == 'max' else 'lowest'} mean; a tie goes to the lr listed first). Every other "
        "table and figure shows each method at its picked learning rate, on the test tasks only."
    )
    return section(
        "lr-selection",
        "Learning-rate selection",
        p(text),
        t(selection_table(sel)),
        fig(figures, "score_vs_lr", "Validation score vs learning rate"),
    )


def reference_numbers(matches: list[dict[str, Any]]) -> Section | None:
    if not matches:
        return None
    blocks = [p("Published / reproduced, in %. Settings differ unless the sweep copies the recipe.")]
    blocks += [t(table, caption) for caption, table in reference_tables(matches)]
    return section("reference", "Reference numbers", *blocks)


def ablations(results: pd.DataFrame, tuned: bool, figures: Figures) -> Section | None:
    """Score vs each varied knob, and the beta / lr pairs; score vs lr here only in an untuned sweep."""
    blocks = [
        fig(figures, "score_vs_k", "Score vs K"),
        fig(figures, "score_vs_tau", "Score vs tau"),
        fig(figures, "score_vs_beta", "Score vs beta"),
        t(beta_pairs(results), "OTR(β) vs OTR(β = 0) at the learning rate scaled by 1/(1 − β)"),
        None if tuned else fig(figures, "score_vs_lr", "Score vs learning rate"),
    ]
    if not any(blocks):
        return None
    return section(
        "ablations",
        "Ablations",
        p("Drawn when the sweep varies the knob (≥ 2 values); error bars: std over seeds."),
        *blocks,
    )


# ------------------------------------------------------------------------------ training, compute
def curves(figures: Figures) -> Section | None:
    if not figures.get("training_curves"):
        return None
    return section("curves", "Training curves", fig(figures, "training_curves", "Training curves"))


def compute(summaries: pd.DataFrame, sft: str | None, figures: Figures) -> Section | None:
    if summaries.empty:
        return None
    return section(
        "compute",
        "Compute",
        p("From each run's train/summary.json; mean ± std over seeds."),
        *(
            [
                p(
                    "Generated tokens are GRPO's sampled completions (each also trained on, so they count in "
                    "the response tokens too); sampled tokens are OTR's K draws per response token. Methods "
                    "are compared by training wall time on the machine each run ran on (generation, rewards "
                    "and the reference model included) and by estimated FLOs: 6 N per token of each trained "
                    "batch (N = parameters without embeddings; padding included, as transformers counts) "
                    "plus, for GRPO, 2 N per token of each forward without gradient (generation, the "
                    "reference model when beta is not 0, the old policy when num_iterations is not 1)."
                )
            ]
            if generates(summaries)
            else []
        ),
        t(compute_table(summaries, sft)),
        fig(figures, "compute", "Compute per method"),
        fig(figures, "score_vs_compute", "Score vs compute"),
    )


def forgetting(forget: pd.DataFrame, base: str | None, figures: Figures) -> Section | None:
    if forget.empty:
        return None
    return section(
        "forgetting",
        "Forgetting",
        p(
            f"Change vs the base model ('{base}') on the non-target tasks (split OOD), in percentage "
            "points: mean over seeds ± the method's std; negative = below the base model."
        ),
        t(forgetting_table(forget)),
        fig(figures, "forgetting", "Forgetting"),
    )


# ------------------------------------------------------------------------------- generations
def examples(items: list[dict[str, Any]]) -> Section | None:
    if not items:
        return None
    return section(
        "examples",
        "Example generations",
        p("The first questions of the first in-domain task; each method's first seed. Raw model output."),
        {"type": "examples", "examples": items, "md": _examples_md(items)},
    )


def _examples_md(items: list[dict[str, Any]]) -> str:
    """Markdown of the generations: every model-written text in a fence it cannot close."""
    out = []
    for ex in items:
        out.append(f"**{md_text(ex['task'])}, document {md_text(ex['doc_id'])}**\n")
        out.append("Prompt:\n\n" + fence(ex["prompt"]) + "\n")
        out.append("Target:\n\n" + fence(ex["target"]) + "\n")
        for r in ex["responses"]:
            seed = "" if r["seed"] is None else f", seed {r['seed']}"
            out.append(
                f"*{md_text(r['method'])}*{seed} — extracted `{md_text(r['extracted']).replace('`', '')}`, "
                f"score {r['score']:g}:\n\n" + fence(r["response"]) + "\n"
            )
    return "\n".join(out)


def code_execution(results: pd.DataFrame) -> Section | None:
    """One line: the sandbox layer model-written code ran in, per task (results.json); None if none ran."""
    if "sandbox" not in results or results["sandbox"].isna().all():
        return None
    layers = (
        results.dropna(subset=["sandbox"]).groupby("task")["sandbox"].agg(lambda s: "/".join(sorted(set(s))))
    )
    used = ", ".join(f"{task}: {layer}" for task, layer in layers.items())
    return section(
        "sandbox", "Code execution", p(f"Model-written code ran in (harness/eval/sandbox.py): {used}.")
    )


# ------------------------------------------------------------------------------- sweep, runs
def comparison(table: pd.DataFrame, name: str, other: Comparison | None) -> Section | None:
    if other is None:
        return None
    cmp = compare_table(table, other.table, name, other.name)
    return section(
        "compare",
        f"Comparison with {other.name}",
        p(f"This sweep ({name}) vs {other.name} ({other.path}): scores in %, methods matched by name."),
        t(cmp) if cmp else p("No method and task in common."),
    )


def runs(all_runs: pd.DataFrame, stale: list[Path]) -> Section:
    """Every run of the sweep (also the learning rates a tuned method was not picked at), the runs not
    done, and the run directories left out because the plan does not list them."""
    blocks = []
    not_done = all_runs[all_runs["status"] != "done"] if not all_runs.empty else all_runs
    if not not_done.empty:
        blocks.append(
            p(
                f"{len(not_done)} run(s) not done: "
                + ", ".join(f"{r.run_id} ({r.status})" for r in not_done.itertuples())
            )
        )
    if stale:
        blocks.append(
            p(
                f"Left out: {len(stale)} run director{'y' if len(stale) == 1 else 'ies'} below the sweep "
                "directory that the current plan does not list (made by an earlier version of the sweep "
                "file or of the toy world): " + ", ".join(path.name for path in stale)
            )
        )
    blocks.append(t(runs_table(all_runs)) if not all_runs.empty else p("No runs."))
    return section("runs", "Runs", *blocks)
