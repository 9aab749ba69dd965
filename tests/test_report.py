"""The report is a pure function of run directories: check its numbers, its escaping, partial sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness import report
from harness.rundir import RunDir, atomic_write_json


def _make_run(sweep: Path, run_id: str, variant: str, seed: int | None, scores: dict[str, float], done=True):
    run = RunDir(sweep / run_id)
    cfg = {"model": "m", "seed": seed or 0}
    if variant != "base":
        cfg["objective"] = {"name": variant}
    run.path.mkdir(parents=True)
    run.config_file.write_text(yaml.safe_dump(cfg))
    atomic_write_json(run.path / "meta.json", {"variant": variant})
    if variant != "base":
        run.mark_done("train")
        run.train_dir.mkdir()
        run.metrics_file.write_text(
            "".join(json.dumps({"step": s, "loss": 2.0 / s, "token_acc": 0.1 * s}) + "\n" for s in (1, 2, 3))
        )
    if not done:
        return run
    tasks = {
        t: {
            "domain": "math",
            "split": t.rsplit("_", 1)[-1],
            "metric": "exact_match,x",
            "value": v,
            "stderr": 0.01,
            "n": 40,
        }
        for t, v in scores.items()
    }
    atomic_write_json(run.eval_dir("toy") / "results.json", {"suite": "toy", "tasks": tasks})
    run.mark_done("eval")
    return run


@pytest.fixture
def sweep(tmp_path):
    d = tmp_path / "runs" / "demo"
    _make_run(d, "base-1", "base", None, {"toy_math_id": 0.25, "toy_math_ood": 0.10})
    _make_run(d, "sft-s0-2", "sft", 0, {"toy_math_id": 0.50, "toy_math_ood": 0.20})
    _make_run(d, "sft-s1-3", "sft", 1, {"toy_math_id": 0.60, "toy_math_ood": 0.30})
    _make_run(d, "otr-s0-4", "otr", 0, {"toy_math_id": 0.40, "toy_math_ood": 0.35})
    _make_run(d, "otr-s1-5", "otr", 1, {}, done=False)  # still pending: must be listed, not crash
    atomic_write_json(d / "plan.json", {"runs": ["base-1", "sft-s0-2", "sft-s1-3", "otr-s0-4", "otr-s1-5"]})
    return d


def test_tidy_table_and_seed_statistics(sweep):
    results, runs = report.collect(sweep)
    assert len(results) == 8  # 4 evaluated runs × 2 tasks
    assert set(results.columns) >= {
        "run_id",
        "variant",
        "seed",
        "task",
        "split",
        "metric",
        "value",
        "stderr",
        "n",
    }
    assert list(runs["variant"]) == ["base", "sft", "sft", "otr", "otr"]
    assert list(runs["status"]) == ["done", "done", "done", "done", "partial"]
    table = report.main_table(results, ["base", "sft", "otr"])
    sft_id = table[(table.variant == "sft") & (table.task == "toy_math_id")].iloc[0]
    assert sft_id["mean"] == pytest.approx(0.55)
    assert sft_id["std"] == pytest.approx(pd.Series([0.5, 0.6]).std())  # sample std, ddof=1: 0.0707
    assert sft_id["n"] == 2
    header, rows = report.wide_table(table)
    assert rows[1][1] == "**55.0 ± 7.1 (n=2)**"  # best in-domain mean is bold
    assert rows[2][1] == "40.0 (n=1)"  # one seed: no std shown


def test_render_writes_all_outputs_and_lists_pending_runs(sweep, tmp_path):
    paths = report.render(sweep, tmp_path / "out")
    md = paths["md"].read_text()
    assert "| sft | **55.0 ± 7.1 (n=2)** |" in md
    assert "otr-s1-5" in md and "partial" in md
    html = paths["html"].read_text()
    assert "<b>55.0 ± 7.1 (n=2)</b>" in html and "data:image/png;base64," in html
    assert (tmp_path / "out" / "scores.png").exists() and (tmp_path / "out" / "scores.svg").exists()
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == 8
    # Deterministic and idempotent: a second rendering is byte-identical.
    first = {k: p.read_bytes() for k, p in paths.items()}
    again = report.render(sweep, tmp_path / "out")
    assert {k: p.read_bytes() for k, p in again.items()} == first


def test_model_written_strings_are_escaped(sweep, tmp_path):
    evil = "<script>alert(1)</script>"
    _make_run(sweep, "evil-s0-6", evil, 0, {"toy_math_id": 0.1, "toy_math_ood": 0.1})
    html = report.render(sweep, tmp_path / "out")["html"].read_text()
    assert evil not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_empty_sweep_renders(tmp_path):
    d = tmp_path / "runs" / "empty"
    d.mkdir(parents=True)
    paths = report.render(d, tmp_path / "out")
    assert "No evaluation results yet" in paths["md"].read_text()
