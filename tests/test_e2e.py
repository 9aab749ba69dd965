"""The whole path on the tiny toy world, for real: sweep -> train -> lm-eval -> report, then resume.

Runs in subprocesses exactly as `make demo` does (a few training steps, a few documents evaluated).
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from harness import paths, toy
from harness.cli import main
from harness.runs.layout import RunDir

# task -> split of the toy suite (its val split is for model selection: not in results.csv)
SUITE_SPLITS = {
    t["task"]: t["split"]
    for t in yaml.safe_load((paths.evaluation_dir() / "suites" / "toy.yaml").read_text())["tasks"]
}


def _sweep(cfg) -> dict:
    return {
        "name": "e2e",
        "toy": cfg.model_dump(mode="json"),
        "base": {
            "model": "toy:base",
            "dataset": toy.dataset_config(max_length=256, max_examples=64),
            "training": {
                "learning_rate": 1e-3,
                "per_device_train_batch_size": 4,
                "max_steps": 4,
                "logging_steps": 1,
            },
            "eval": {"suites": ["toy"], "limit": 5, "batch_size": 8},
        },
        "variants": {
            "sft": {"objective": {"name": "sft"}},
            "otr": {"objective": {"name": "otr", "k": 4, "tau": 1.2, "beta": -0.1}},
            # A run that fails inside its training stage (the model load; bad data or training values are
            # refused before any run starts): it must be recorded, and not stop the others.
            "broken": {"objective": {"name": "sft"}, "attn_implementation": "no_such_attention"},
        },
        "seeds": [0],
    }


@pytest.mark.slow
def test_sweep_end_to_end_then_resume(tmp_path, tiny_toy, capsys):
    cfg, _ = tiny_toy
    sweep_file = tmp_path / "e2e.yaml"
    sweep_file.write_text(yaml.safe_dump(_sweep(cfg)))
    runs_dir, report_dir = tmp_path / "runs", tmp_path / "report"
    argv = ["sweep", "run", str(sweep_file), "--out", str(runs_dir), "--report-dir", str(report_dir)]

    assert main(argv) == 1  # the broken run fails the command...
    out = capsys.readouterr().out
    assert "1 of 4 runs failed" in out and "no_such_attention" in out

    runs = {RunDir(p.parent).run_id.split("-")[0]: RunDir(p.parent) for p in runs_dir.glob("*/config.yaml")}
    assert set(runs) == {"base", "sft", "otr", "broken"}
    broken = runs.pop("broken")
    assert broken.is_failed("train") and "no_such_attention" in broken.failure("train")
    assert broken.log_file("train").exists() and not broken.is_done("eval")

    # ...but every other run finished: trained (4 logged steps), saved, evaluated on 5 documents per task.
    for name, run in runs.items():
        assert run.is_done("eval"), name
        results = json.loads((run.eval_dir("toy") / "results.json").read_text())
        assert set(results["tasks"]) == set(SUITE_SPLITS)
        for task, r in results["tasks"].items():
            assert r["n"] == 5 and 0.0 <= r["value"] <= 1.0
            samples = (run.eval_dir("toy") / f"samples_{task}.jsonl").read_text().splitlines()
            assert len(samples) == 5
        if name != "base":
            metrics = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
            assert [m["step"] for m in metrics] == [1, 2, 3, 4]
            # OTR's loss may be negative (beta < 0 rewards wrong draws negatively); its NLL may not.
            assert all(
                math.isfinite(m["loss"]) and m["nll"] > 0 and 0 <= m["token_acc"] <= 1 for m in metrics
            )
            assert (run.final_model / "config.json").exists() and (
                run.final_model / "tokenizer.json"
            ).exists()
            summary = json.loads(run.summary_file.read_text())
            assert summary["steps"] == 4 and summary["response_tokens"] > 0
    otr_summary = json.loads(runs["otr"].summary_file.read_text())
    assert otr_summary["sampled_tokens"] == 4 * otr_summary["response_tokens"]

    # The report's table holds exactly the runs' numbers.
    csv = pd.read_csv(report_dir / "results.csv")
    assert len(csv) == 3 * sum(split != "val" for split in SUITE_SPLITS.values())  # base, sft, otr × tasks
    base_id = json.loads((runs["base"].eval_dir("toy") / "results.json").read_text())["tasks"]["toy_math_id"]
    row = csv[(csv.variant == "base") & (csv.task == "toy_math_id")].iloc[0]
    assert row.value == pytest.approx(base_id["value"])
    md = (report_dir / "report.md").read_text()
    assert f"| base | {100 * base_id['value']:.1f}" in md.replace("**", "")
    assert "broken" in md and "failed" in md
    assert (report_dir / "report.html").stat().st_size > 10_000  # the plots are embedded

    # Re-running skips every finished stage (logs untouched) and retries only the failed run.
    logs_before = {n: r.log_file("eval").stat().st_mtime_ns for n, r in runs.items()}
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert out.count("skip ") == 3
    assert {n: r.log_file("eval").stat().st_mtime_ns for n, r in runs.items()} == logs_before
