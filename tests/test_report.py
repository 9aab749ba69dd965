"""The report is a pure function of run directories: its numbers, its statistics, its escaping, partial
sweeps, and the HTML as a browser shows it. Run directories are synthetic (written as ``harness.runs.layout``
lays them out), so every number here is known in advance."""

from __future__ import annotations

import html as htmlmod
import json
import math
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness import report
from harness.cli import main
from harness.report import data, tuning
from harness.report.plots import _tick_label
from harness.runs.io import atomic_write_json
from harness.runs.layout import RunDir, SweepDir

TASKS = {  # task -> (domain, split)
    "toy_math_id": ("math", "id"),
    "toy_math_ood": ("math", "ood"),
    "toy_code_ood": ("code", "ood"),
    "toy_math_val": ("math", "val"),  # model selection only: never a result
}
METRIC = "exact_match,strict-match"


def _make_run(
    sweep: Path,
    run_id: str,
    variant: str,
    seed: int | None,
    scores: dict[str, list[float]],
    *,
    objective: dict | None = None,
    lr: float = 1e-3,
    done: bool = True,
    responses: dict[int, str] | None = None,
) -> RunDir:
    """A run directory; ``scores[task]`` are the per-question scores (the task's value is their mean)."""
    run = RunDir(sweep / run_id)
    run.path.mkdir(parents=True)
    is_base = variant == "base"
    cfg = {"model": "toy:base", "seed": seed or 0}
    if not is_base:
        cfg["objective"] = objective or {"name": variant}
        cfg["training"] = {"learning_rate": lr, "max_steps": 3}
        cfg["dataset"] = {"path": "toy:math/train"}
    run.config_file.write_text(yaml.safe_dump(cfg))
    atomic_write_json(run.meta_file, {"variant": variant, "sweep": "demo"})
    if not is_base:
        run.mark_done("train")
        run.train_dir.mkdir(parents=True, exist_ok=True)
        scale = 1 + (seed or 0) * 0.1
        run.metrics_file.write_text(
            "".join(
                json.dumps(
                    {
                        "step": s,
                        "loss": 2.0 / s * scale,
                        "token_acc": 0.1 * s,
                        "entropy": 3.0 - 0.5 * s,
                        "p_gt": 0.05 * s,
                        "nll": 2.5 / s,
                    }
                )
                + "\n"
                for s in (1, 2, 3)
            )
        )
        k = (cfg["objective"].get("k") or 0) if cfg["objective"]["name"] == "otr" else 0
        atomic_write_json(
            run.summary_file,
            {
                "wall_time_s": 10.0 * (1 + k / 16) + (seed or 0),
                "train_runtime_s": 9.0,
                "steps": 3,
                "response_tokens": 1000,
                "sampled_tokens": 1000 * k,
                "peak_memory_mb": 500.0 + k,
                "flos": 1e9,
            },
        )
    if not done:
        return run
    tasks = {}
    for task, per_q in scores.items():
        domain, split = TASKS[task]
        tasks[task] = {
            "domain": domain,
            "split": split,
            "metric": METRIC,
            "value": float(np.mean(per_q)),
            "stderr": 0.01,
            "n": len(per_q),
        }
        lines = []
        for q, score in enumerate(per_q):
            resp = (responses or {}).get(q, f" answer {q}")
            entry = {
                "doc_id": q,
                "doc": {"question": f"What is {q} + 1?"},
                "target": f" {q + 1}",
                "arguments": [[f"Question: What is {q} + 1?\nAnswer:", {"until": ["\n"]}]],
                "resps": [[resp]],
                "filtered_resps": [resp.strip()],
                "metrics": ["exact_match"],
            }
            # lm-eval logs every document once per filter: only the primary metric's filter counts.
            lines.append({**entry, "filter": "strict-match", "exact_match": score})
            lines.append({**entry, "filter": "flexible-extract", "exact_match": 1.0 - score})
        (run.eval_dir("toy")).mkdir(parents=True, exist_ok=True)
        run.samples_file("toy", task).write_text("".join(json.dumps(x) + "\n" for x in lines))
    atomic_write_json(run.results_file("toy"), {"suite": "toy", "tasks": tasks})
    run.mark_done("eval")
    return run


def _scores(p: float, seed: int, n: int = 30) -> list[float]:
    """Deterministic 0/1 per-question scores with accuracy about p."""
    rng = np.random.default_rng(seed)
    return [float(x) for x in (rng.random(n) < p)]


def _all_tasks(p_id: float, p_ood: float, seed: int) -> dict[str, list[float]]:
    return {
        "toy_math_id": _scores(p_id, seed),
        "toy_math_ood": _scores(p_ood, seed + 100),
        "toy_code_ood": _scores(p_ood * 0.8, seed + 200),
    }


def _build_rich_sweep(d: Path) -> list[str]:
    """Base, SFT, OTR at K in {1, 4, 16} (+ tau and beta ablations and the beta/lr pair), exact OTR,
    a failed run and a planned run that has no directory yet."""
    ids = []

    def add(run_id, variant, seed, p_id, p_ood, **kw):
        _make_run(d, run_id, variant, seed, _all_tasks(p_id, p_ood, zlib.crc32(run_id.encode()) % 1000), **kw)
        ids.append(run_id)

    add("base", "base", None, 0.2, 0.4)
    for s in (0, 1):
        add(f"sft-s{s}", "sft", s, 0.5 + 0.05 * s, 0.3, lr=1e-3)
        for k, p in ((1, 0.5), (4, 0.6), (16, 0.8)):
            otr = {"name": "otr", "k": k, "tau": 1.2, "beta": -0.1}
            add(f"otr-k{k}-s{s}", f"otr-k{k}", s, p + 0.02 * s, 0.38, objective=otr)
    add("otr_exact-s0", "otr_exact", 0, 0.85, 0.4, objective={"name": "otr_exact", "tau": 1.2, "beta": -0.1})
    add("otr-tau1-s0", "otr-tau1", 0, 0.7, 0.35, objective={"name": "otr", "k": 16, "tau": 1.0, "beta": -0.1})
    add("otr-b0-s0", "otr-b0", 0, 0.75, 0.35, objective={"name": "otr", "k": 16, "tau": 1.2, "beta": 0.0})
    add(
        "otr-b0-lr-s0",
        "otr-b0-lr",
        0,
        0.78,
        0.35,
        objective={"name": "otr", "k": 16, "tau": 1.2, "beta": 0.0},
        lr=1e-3 / 1.1,  # lr0 / (1 - beta) at beta = -0.1
    )
    broken = _make_run(d, "broken-s0", "broken", 0, {}, done=False)
    broken.mark_failed("eval", "Traceback ...\nKeyError: 'no_such_field'")
    ids.append("broken-s0")
    ids.append("later-s0-0123abcd")  # planned, never started
    atomic_write_json(SweepDir(d).plan_file, {"sweep": "demo", "runs": ids})
    return ids


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    """The rich sweep rendered once (with a reference file that matches it); tests read the outputs."""
    root = tmp_path_factory.mktemp("rich")
    d = root / "runs" / "demo"
    _build_rich_sweep(d)
    refs = root / "reference"
    refs.mkdir()
    (refs / "toy_paper.yaml").write_text(
        yaml.safe_dump(
            {
                "source": "Toy paper, Table 9",
                "metric": "accuracy (%)",
                "benchmarks": {"toyid": ["toy_math_id"], "gsm8k": ["gsm8k"]},
                "results": [
                    {
                        "model": "toy:base",
                        "train_data": "toy",
                        "scores": {"base": {"toyid": 12.5}, "sft": {"toyid": 48.25}},
                    },
                    {"model": "other/model", "scores": {"base": {"toyid": 99.0}}},
                ],
            }
        )
    )
    paths = report.render(d, root / "out", reference_dir=refs)
    return d, root / "out", paths


# ------------------------------------------------------------------------------------- collect
def test_tidy_table_has_every_knob_and_lists_every_run(rich):
    d, _, _ = rich
    results, runs = report.collect(d)
    assert len(results) == 13 * 3  # 13 evaluated runs × 3 tasks; the failed and planned runs add no rows
    cols = list(results.columns)
    for c in [
        "run_id",
        "method",
        "seed",
        "suite",
        "task",
        "split",
        "metric",
        "value",
        "stderr",
        "n",
        "learning_rate",
    ]:
        assert c in cols, c
    assert {"param_k", "param_tau", "param_beta"} <= set(cols)
    exact = results[results.method == "otr_exact"].iloc[0]
    assert math.isnan(exact.param_k) and exact.param_tau == 1.2  # exact OTR has no K
    k1 = results[results.run_id == "otr-k1-s0"].iloc[0]
    assert (k1.param_k, k1.objective, k1.seed, k1.learning_rate) == (1, "otr", 0, 1e-3)
    status = dict(zip(runs.run_id, runs.status, strict=True))
    assert status["broken-s0"] == "failed" and status["later-s0-0123abcd"] == "pending"
    assert "no_such_field" in runs.set_index("run_id").loc["broken-s0", "error"]
    assert list(runs.run_id[:3]) == ["base", "sft-s0", "otr-k1-s0"]  # plan order


def test_seed_statistics_std_and_n(tmp_path):
    d = tmp_path / "runs" / "s"
    _make_run(d, "sft-s0", "sft", 0, {"toy_math_id": [1, 0, 0, 0], "toy_math_ood": [0, 0, 0, 1]})
    _make_run(d, "sft-s1", "sft", 1, {"toy_math_id": [1, 1, 0, 0], "toy_math_ood": [0, 0, 0, 0]})
    _make_run(d, "sft-s2", "sft", 2, {"toy_math_id": [1, 1, 1, 1]})
    _make_run(d, "otr-s0", "otr", 0, {"toy_math_id": [1, 1, 1, 0], "toy_math_ood": [1, 0, 0, 0]})
    results, _ = report.collect(d)
    table = report.main_table(results, ["sft", "otr"])
    row = table[(table.method == "sft") & (table.task == "toy_math_id")].iloc[0]
    # values 0.25, 0.5, 1.0: mean 7/12; sample std sqrt(sum((x - mean)^2) / (3 - 1)), by hand:
    mean = (0.25 + 0.5 + 1.0) / 3
    std = math.sqrt(((0.25 - mean) ** 2 + (0.5 - mean) ** 2 + (1.0 - mean) ** 2) / 2)
    assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std) and row["n"] == 3
    ood = table[(table.method == "sft") & (table.task == "toy_math_ood")].iloc[0]
    assert ood["n"] == 2 and ood["std"] == pytest.approx(
        math.sqrt((0.125**2) * 2)
    )  # seed 2 has no OOD result
    one = table[(table.method == "otr") & (table.task == "toy_math_id")].iloc[0]
    assert one["n"] == 1 and math.isnan(one["std"])
    header, rows = report.wide_table(table)
    assert header == ["method", "toy_math_id", "toy_math_ood"]
    assert rows[0][1] == f"{100 * mean:.1f} ± {100 * std:.1f} (n=3)"  # 58.3 ± 38.2 (n=3)
    assert rows[1][1] == "**75.0 (n=1)**"  # one seed: no std; best mean in its column: bold


def test_runs_outside_the_current_plan_are_left_out(tmp_path):
    """A run directory from an earlier version of the sweep (another config hash, e.g. an older toy
    world) must not be averaged with the current runs; it is named in the Runs section instead."""
    d = tmp_path / "runs" / "s"
    _make_run(d, "sft-s0-new", "sft", 0, {"toy_math_id": [1, 1, 0, 0]})
    _make_run(d, "sft-s0-old", "sft", 0, {"toy_math_id": [0, 0, 0, 0]})
    atomic_write_json(SweepDir(d).plan_file, {"sweep": "s", "runs": ["sft-s0-new"]})
    results, runs = report.collect(d)
    assert list(runs.run_id) == ["sft-s0-new"] and set(results.run_id) == {"sft-s0-new"}
    assert report.main_table(results, ["sft"]).iloc[0]["mean"] == pytest.approx(0.5)
    report.render(d, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Left out: 1 run directory" in md and "sft-s0-old" in md


# --------------------------------------------------------------------------------- significance
def _hand_bootstrap(m: list[float], s: list[float], n_boot: int, seed: int) -> tuple[float, float, float]:
    """The documented procedure, written out with plain Python arithmetic (only the draws use numpy)."""
    n = len(m)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n)).tolist()
    diffs = sorted(sum(m[i] for i in row) / n - sum(s[i] for i in row) / n for row in idx)

    def percentile(q):  # linear interpolation between order statistics, as numpy.quantile does
        pos = q * (n_boot - 1)
        lo, frac = int(math.floor(pos)), pos - math.floor(pos)
        return diffs[lo] + frac * (diffs[min(lo + 1, n_boot - 1)] - diffs[lo])

    return sum(m) / n - sum(s) / n, percentile(0.025), percentile(0.975)


def test_paired_bootstrap_matches_hand_computation(tmp_path):
    d = tmp_path / "runs" / "boot"
    # Two seeds per method on the same 8 questions; per question, seeds are averaged first.
    sft = [[1, 0, 0, 1, 0, 0, 1, 0], [1, 1, 0, 0, 0, 0, 1, 0]]
    otr = [[1, 1, 1, 1, 0, 1, 1, 0], [1, 1, 0, 1, 1, 1, 1, 1]]
    for s in (0, 1):
        _make_run(d, f"sft-s{s}", "sft", s, {"toy_math_id": sft[s]})
        _make_run(d, f"otr-s{s}", "otr", s, {"toy_math_id": otr[s]})
    results, _ = report.collect(d)
    samples = report.load_samples(d, results)
    assert len(samples) == 4 * 8  # the 'flexible-extract' duplicates are not counted
    sig = report.significance(samples, "sft", ["sft", "otr"], n_boot=500, seed=7)
    assert len(sig) == 1
    r = sig.iloc[0]
    m = [(a + b) / 2 for a, b in zip(*otr, strict=True)]  # 1, 1, .5, 1, .5, 1, 1, .5
    s = [(a + b) / 2 for a, b in zip(*sft, strict=True)]  # 1, .5, 0, .5, 0, 0, 1, 0
    delta, lo, hi = _hand_bootstrap(m, s, n_boot=500, seed=7)
    assert r.delta == pytest.approx(delta) and delta == pytest.approx(0.4375)
    assert (r.lo, r.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert r.n == 8 and r.seeds == 2 and r.ref_seeds == 2
    assert r.significant == (lo > 0)
    # The point estimate equals the difference of the seed means in the main table.
    table = report.main_table(results, ["sft", "otr"])
    means = table.set_index("method")["mean"]
    assert r.delta == pytest.approx(means["otr"] - means["sft"])
    # Another seed gives another (valid) CI; the same seed the same CI: deterministic.
    again = report.significance(samples, "sft", ["sft", "otr"], n_boot=500, seed=7).iloc[0]
    assert (again.lo, again.hi) == (r.lo, r.hi)


def test_paired_bootstrap_edge_cases():
    same = report.paired_bootstrap([1, 0, 1, 0], [1, 0, 1, 0])
    assert same == {"delta": 0.0, "lo": 0.0, "hi": 0.0, "n": 4}
    allwin = report.paired_bootstrap([1, 1, 1], [0, 0, 0])
    assert (allwin["delta"], allwin["lo"], allwin["hi"]) == (1.0, 1.0, 1.0)
    assert math.isnan(report.paired_bootstrap([], [])["delta"])
    with pytest.raises(ValueError, match="one length"):
        report.paired_bootstrap([1, 0], [1])


# -------------------------------------------------------------------------------------- render
def test_main_table_has_deltas_ci_and_groups(rich):
    d, out, paths = rich
    md = paths["md"].read_text()
    results, _ = report.collect(d)
    table = report.main_table(results, [])
    sft = table[(table.method == "sft") & (table.task == "toy_math_id")].iloc[0]
    k16 = table[(table.method == "otr-k16") & (table.task == "toy_math_id")].iloc[0]
    base = table[(table.method == "base") & (table.task == "toy_math_id")].iloc[0]
    row = next(line for line in md.splitlines() if line.startswith("| otr-k16 |"))
    cell = row.split(" | ")[1]
    assert cell.startswith(report.fmt_score(k16["mean"], k16["std"], 2))
    assert f"Δ SFT {100 * (k16['mean'] - sft['mean']):+.1f} [" in cell
    assert f"Δ base {100 * (k16['mean'] - base['mean']):+.1f}" in cell
    assert "]\\*" in cell  # +30 pp over SFT on 30 questions: the CI excludes 0 (marked, escaped for Markdown)
    assert md.index("| base |") < md.index("| sft |") < md.index("| otr-k1 |")  # base, SFT, then plan order
    header = next(line for line in md.splitlines() if line.startswith("| method |"))
    assert header.index("toy_math_id") < header.index("toy_math_ood") < header.index("toy_code_ood")
    assert "math · in-domain" in header and "code · OOD" in header
    assert "## Significance vs sft" in md and "| otr-k16 | toy_math_id |" in md


def test_render_writes_figures_reference_and_lists_unfinished_runs(rich):
    d, out, paths = rich
    for stem in [
        "scores",
        "score_vs_k",
        "score_vs_tau",
        "score_vs_beta",
        "training_curves",
        "compute",
        "score_vs_compute",
        "forgetting",
        "score_vs_lr",  # OTR ran at two learning rates (the beta pair)
    ]:
        assert (out / f"{stem}.png").stat().st_size > 1000, stem
        assert (out / f"{stem}.svg").exists(), stem
    md = paths["md"].read_text()
    for stem in ["scores", "score_vs_k", "training_curves", "compute", "forgetting"]:
        assert f"]({stem}.png)" in md
    # beta = -0.1 at lr0 beside beta = 0 at lr0 / 1.1
    # ... paired only with the runs that share the other knobs (k = 16, tau = 1.2), not with k = 1 or 4.
    assert "OTR(β) vs OTR(β = 0)" in md and "| toy_math_id | k=16, tau=1.2 | -0.1 | 0.001: " in md
    assert "| toy_math_id | k=1, " not in md and "| toy_math_id | k=4, " not in md
    # Reference numbers: the matching entry only, published / reproduced.
    assert "Toy paper, Table 9: toy:base" in md and "99.00" not in md
    results, _ = report.collect(d)
    sft_rep = 100 * results[(results.method == "sft") & (results.task == "toy_math_id")]["value"].mean()
    assert f"| sft | 48.25 / {sft_rep:.2f} |" in md
    # Compute: K = 16 OTR samples 16 tokens per response token.
    assert "| otr-k16 | 2 | 20.5 ± 0.707 |" in md and "| 16k |" in md
    # Forgetting: per OOD task and the count of drops below base.
    assert "## Forgetting" in md and "drops below base" in md
    # Unfinished runs are listed, with the failure's last line.
    assert "broken-s0 (failed)" in md and "later-s0-0123abcd (pending)" in md and "KeyError" in md
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == 39 and {"param_k", "learning_rate"} <= set(csv.columns)
    if (out / "results.parquet").exists():
        assert pd.read_parquet(out / "results.parquet").shape == csv.shape


def test_main_table_is_aggregated_once_per_render(tmp_path, monkeypatch):
    """The references (SFT, base) are picked from the one aggregate, which is then put in row order: the
    seed means are computed once, and the ordered table equals ``main_table`` with that row order."""
    d = tmp_path / "runs" / "once"
    _make_run(d, "otr-s0", "otr", 0, {"toy_math_id": [1, 1, 0, 1]})
    _make_run(d, "sft-s0", "sft", 0, {"toy_math_id": [1, 0, 0, 1]})
    _make_run(d, "base", "base", None, {"toy_math_id": [0, 0, 0, 1]})
    calls = []
    real = data.seed_means
    monkeypatch.setattr(data, "seed_means", lambda results: calls.append(1) or real(results))
    collected = data.gather(d)
    computed = data.compute(collected, d, ref_dir=tmp_path / "none", compare=None, n_boot=20, seed=0)
    assert len(calls) == 1
    assert (computed.sft, computed.base, computed.methods) == ("sft", "base", ["base", "sft", "otr"])
    expected = report.main_table(collected.results, computed.methods)
    pd.testing.assert_frame_equal(computed.table, expected)
    assert list(computed.table["method"]) == ["base", "sft", "otr"]


def test_rendering_is_deterministic_and_idempotent(rich, tmp_path):
    d, out, paths = rich
    files = sorted(p.name for p in out.iterdir())
    first = {name: (out / name).read_bytes() for name in files}
    again = report.render(d, tmp_path / "again", reference_dir=d.parent.parent / "reference")
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == files
    for name in files:
        if name.endswith((".md", ".html")):  # these name the sweep directory, which is the same
            continue
        assert (tmp_path / "again" / name).read_bytes() == first[name], name
    assert again["html"].read_text() == paths["html"].read_text()
    # A re-render after the sweep lost its K axis removes the figure that no longer applies.
    small = tmp_path / "small"
    _make_run(small, "sft-s0", "sft", 0, {"toy_math_id": [1, 0]})
    (tmp_path / "again" / "report.md").write_text("stale")
    report.render(small, tmp_path / "again")
    assert not (tmp_path / "again" / "score_vs_k.png").exists()
    assert (tmp_path / "again" / "report.md").read_text() != "stale"


def test_model_written_strings_are_escaped(tmp_path):
    d = tmp_path / "runs" / "evil"
    evil = "<script>alert(1)</script>"
    _make_run(d, "base", "base", None, {"toy_math_id": [0, 1]}, responses={0: f" {evil} & </pre>"})
    _make_run(d, "sft-s0", "sft", 0, {"toy_math_id": [1, 1]}, responses={0: f" ```\n{evil}"})
    _make_run(d, "x-s0", evil, 0, {"toy_math_id": [1, 0]}, objective={"name": "sft"})
    paths = report.render(d, tmp_path / "out")
    html = paths["html"].read_text()
    assert evil not in html
    examples = html[html.index('<section id="examples">') :]
    assert examples.count("<pre>") == examples.count("</pre>")  # a generation cannot close its <pre>
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;/pre&gt;" in html  # the generation
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # generation, method name in tables
    md = paths["md"].read_text()
    assert "| &lt;script&gt;alert(1)&lt;/script&gt; |" in md  # table cells escaped
    assert "````text\n ```\n<script>" in md  # a generation stays inside a fence longer than its backticks
    assert evil not in md.split("## Example generations")[0]


def test_partial_and_empty_sweeps_render(tmp_path):
    empty = tmp_path / "runs" / "empty"
    empty.mkdir(parents=True)
    assert "No evaluation results yet" in report.render(empty, tmp_path / "o1")["md"].read_text()
    # Nothing evaluated yet, one run failed in training, no SFT: no crash, no Δ/CI columns.
    d = tmp_path / "runs" / "partial"
    run = _make_run(d, "otr-s0", "otr", 0, {}, done=False)
    run.mark_failed("train", "RuntimeError: out of memory")
    _make_run(d, "base", "base", None, {"toy_math_id": [0, 1]})
    atomic_write_json(SweepDir(d).plan_file, {"runs": ["base", "otr-s0", "dft-s0-abc"]})
    md = report.render(d, tmp_path / "o2")["md"].read_text()
    assert "| base | 50.0 (n=1) |" in md.replace("**", "") and "Δ SFT" not in md and "Significance" not in md
    assert "otr-s0 (failed)" in md and "dft-s0-abc (pending)" in md and "out of memory" in md


def test_cli_report_with_compare(tmp_path, capsys):
    d = tmp_path / "runs" / "this"
    for s in (0, 1):
        _make_run(d, f"sft-s{s}", "sft", s, {"toy_math_id": [1, 0, 1, s]})
    other = tmp_path / "runs" / "other"
    _make_run(other, "sft-s0", "sft", 0, {"toy_math_id": [0, 0, 1, 1]})
    out = tmp_path / "cmp"
    assert main(["report", str(d), "--out", str(out), "--compare", str(other)]) == 0
    assert "report.html" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "## Comparison with other" in md
    assert "| sft | 62.5 vs 50.0<br>Δ +12.5 (n=2 / 1) |" in md
    assert main(["report", str(d), "--compare", str(tmp_path / "nothing")]) == 2


# ------------------------------------------------------------------------------------- browser
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=60, check=False)


_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {alt: i.alt, complete: i.complete, width: i.naturalWidth};
  });
  var pre = document.createElement("pre");
  pre.id = "image-probe";
  pre.textContent = JSON.stringify(imgs);
  document.body.appendChild(pre);
});
</script>
"""


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (.ci/run installs Debian's chromium)")
def test_html_renders_in_headless_chromium(rich, tmp_path):
    d, out, paths = rich
    exe = _chromium()
    page = paths["html"].read_text()
    assert "<script" not in page  # the report itself runs no script; the probe below is added to a copy
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    res = _run_chromium(
        exe, tmp_path / "profile1", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()
    )
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    m = re.search(r'<pre id="image-probe">(.*?)</pre>', dom, re.S)
    assert m, "the probe did not run: " + dom[-500:]
    images = json.loads(htmlmod.unescape(m.group(1)))
    assert len(images) == page.count("<img ") >= 8
    assert all(i["complete"] and i["width"] > 0 for i in images), images
    # The page's text holds the main table, as the browser parsed it.
    table = re.search(r'<table id="main-table">(.*?)</table>', dom, re.S)
    assert table, "no main table in the DOM"
    text = re.sub(r"<[^>]+>", " ", htmlmod.unescape(table.group(1)))
    results, _ = report.collect(d)
    main_t = report.main_table(results, [])
    sft = main_t[(main_t.method == "sft") & (main_t.task == "toy_math_id")].iloc[0]
    assert report.fmt_score(sft["mean"], sft["std"], 2) in text
    assert "toy_code_ood" in text and "otr-k16" in text and "Δ base" in text
    shot = tmp_path / "report.png"
    res = _run_chromium(
        exe, tmp_path / "profile2", "--window-size=1280,2400", f"--screenshot={shot}", paths["html"].as_uri()
    )
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]


# --- learning-rate tuning -----------------------------------------------------------------------------
LRS = [1e-4, 1e-3, 1e-2]
# (method, lr) -> (validation accuracy, in-domain test accuracy). On test, sft looks best at 1e-4: the
# report must still pick 1e-3, the best on validation.
TUNED = {
    ("sft", 1e-4): (0.30, 0.90),
    ("sft", 1e-3): (0.60, 0.50),
    ("sft", 1e-2): (0.40, 0.40),
    ("otr", 1e-4): (0.20, 0.30),
    ("otr", 1e-3): (0.50, 0.30),
    ("otr", 1e-2): (0.50, 0.70),  # ties 1e-3 on validation? no: 1e-3 is listed first, see below
}


def _build_tuned_sweep(d: Path, val: dict | None = None) -> None:
    val = val or {}
    _make_run(d, "base", "base", None, {"toy_math_id": _scores(0.1, 1), "toy_math_val": _scores(0.1, 2)})
    for (method, lr), (p_val, p_test) in TUNED.items():
        p_val = val.get((method, lr), p_val)
        for s in (0, 1):
            run_id = f"{method}-lr{lr:g}-s{s}"
            # Fixed per-question scores: the mean over seeds is exactly p (30 questions, p*30 correct).
            n_val, n_test = round(p_val * 30), round(p_test * 30)
            scores = {
                "toy_math_id": [1.0] * n_test + [0.0] * (30 - n_test),
                "toy_math_val": [1.0] * n_val + [0.0] * (30 - n_val),
            }
            _make_run(d, run_id, f"{method}-lr{lr:g}", s, scores, lr=lr, objective={"name": method})
            atomic_write_json(
                RunDir(d / run_id).meta_file,
                {"variant": f"{method}-lr{lr:g}", "sweep": "tuned", "tuning_group": method},
            )
    SweepDir(d).sweep_file.write_text(
        yaml.safe_dump(
            {
                "name": "tuned",
                "base": {"model": "toy:base"},
                "lr_tuning": {
                    "learning_rates": LRS,
                    "select": {
                        "suite": "toy",
                        "task": "toy_math_val",
                        "metric": "exact_match",
                        "mode": "max",
                    },
                },
            }
        )
    )


def test_tuned_sweep_compares_each_method_at_its_validation_picked_lr(tmp_path):
    d = tmp_path / "runs" / "tuned"
    _build_tuned_sweep(d)
    paths = report.render(d, tmp_path / "out", n_boot=200)
    md = paths["md"].read_text()
    out = tmp_path / "out"

    sel = pd.read_csv(out / "selection.csv")
    picked = {(r.group, r.learning_rate) for r in sel.itertuples() if r.selected}
    # otr ties at 0.5 on validation between 1e-3 and 1e-2: the lr listed first wins.
    assert picked == {("sft", 1e-3), ("otr", 1e-3)}
    assert len(sel) == 6 and sel.loc[(sel.group == "sft") & (sel.learning_rate == 1e-3), "mean"].item() == 0.6

    # Main table: one row per method (not per lr), at the picked lr, on test tasks only.
    main = md.split("## Main table")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in main.splitlines() if line.startswith("| ")}
    assert {"base", "sft", "otr"} <= set(rows) and not any("lr" in m for m in rows if m not in ("method",))
    assert "50.0 ± 0.0 (n=2)" in rows["sft"]  # its test score at the picked 1e-3, not the 90.0 at 1e-4
    assert "30.0 ± 0.0 (n=2)" in rows["otr"] and "Δ SFT −20.0" in rows["otr"].replace("-", "−")
    assert "90.0" not in rows["sft"] and "toy_math_val" not in rows["method"]  # no validation column
    assert (
        "sft at lr 0.001" in main and "otr at lr 0.001" in main and "validation task toy/toy_math_val" in main
    )

    # The selection is stated with its grid; validation rows are never results.
    assert "## Learning-rate selection" in md
    results = pd.read_csv(out / "results.csv")
    assert "val" not in set(results["split"]) and len(results) == 1 + 12  # every run's test row, base too
    assert set(pd.read_csv(out / "validation.csv")["task"]) == {"toy_math_val"}
    assert (out / "score_vs_lr.png").exists()  # drawn on validation, in the selection section
    assert "Validation score vs learning rate" in md and "Score vs learning rate" not in md
    # The runs table still lists every run, also the lrs not picked.
    runs_section = md.split("## Runs")[1]
    assert all(f"{m}-lr{lr:g}-s{s}" in runs_section for (m, lr) in TUNED for s in (0, 1))


def test_tuned_selection_follows_validation_and_mode(tmp_path):
    d = tmp_path / "runs" / "tuned"
    _build_tuned_sweep(d, val={("otr", 1e-2): 0.8})
    results, runs = report.collect(d)
    tun = tuning.read_tuning(d)
    sel = tuning.select(results[results.split == "val"], runs, tun)
    assert sel.chosen == {"sft": 1e-3, "otr": 1e-2}
    tun["select"]["mode"] = "min"
    assert tuning.select(results[results.split == "val"], runs, tun).chosen == {"sft": 1e-4, "otr": 1e-4}
    kept, kept_runs = tuning.apply(results[results.split != "val"], runs, sel)
    assert set(kept["method"]) == {"base", "sft", "otr"}
    assert sorted(kept_runs["run_id"]) == sorted(
        ["base", "sft-lr0.001-s0", "sft-lr0.001-s1", "otr-lr0.01-s0", "otr-lr0.01-s1"]
    )


def test_val_rows_are_never_results_in_an_untuned_sweep(tmp_path):
    d = tmp_path / "runs" / "plain"
    _make_run(d, "sft-s0", "sft", 0, {"toy_math_id": _scores(0.5, 1), "toy_math_val": _scores(0.9, 2)})
    paths = report.render(d, tmp_path / "out", n_boot=50)
    md = paths["md"].read_text()
    assert "toy_math_val" not in md and "Learning-rate selection" not in md
    assert set(pd.read_csv(tmp_path / "out" / "results.csv")["task"]) == {"toy_math_id"}
    assert not (tmp_path / "out" / "selection.csv").exists()


def test_plot_tick_labels_wrap_long_task_names_without_losing_characters():
    for task in [
        "toy_reasoning_logic_ood",
        "minerva_math_algebra",
        "gsm8k",
        "a_b",
        "averyveryverylongname_x",
    ]:
        assert _tick_label(task).replace("\n", "") == task
    assert _tick_label("toy_reasoning_logic_ood") == "toy_reasoning_\nlogic_ood"
    assert _tick_label("toy_math_id") == "toy_math_id"  # short names stay on one line
