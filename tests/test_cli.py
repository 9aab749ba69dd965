"""The stand-alone commands: `otr-harness train CONFIG --out DIR` and `otr-harness eval TARGET --suite S`."""

from __future__ import annotations

import json

import pytest
import yaml

from harness import toy
from harness.cli import build_parser, main
from harness.runs.layout import RunDir


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for cmd in ("sweep", "report", "train", "eval", "toy"):
        assert cmd in out
    assert "otr-harness sweep run sweeps/demo.yaml" in out


@pytest.mark.slow
def test_train_then_eval_a_single_run(tmp_path, tiny_toy, capsys):
    cfg, _ = tiny_toy
    run_cfg = {
        "model": "toy:base",
        "toy": cfg.model_dump(mode="json"),
        "dataset": toy.dataset_config(max_examples=16),
        "objective": {"name": "otr_exact", "tau": 1.0, "beta": 0.0},
        "training": {"per_device_train_batch_size": 4, "max_steps": 2, "logging_steps": 1},
        "eval": {"suites": ["toy"], "limit": 3, "batch_size": 4},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_cfg))
    out_dir = tmp_path / "one"

    assert main(["train", str(path), "--out", str(out_dir)]) == 0
    run = RunDir(out_dir)
    assert run.is_done("train") and (run.final_model / "model.safetensors").exists()
    assert json.loads(run.summary_file.read_text())["steps"] == 2
    assert f"model: {run.final_model}" in capsys.readouterr().out

    assert main(["eval", str(out_dir), "--suite", "toy", "--limit", "3", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    results = json.loads((run.eval_dir("toy") / "results.json").read_text())
    for task, r in results["tasks"].items():
        assert r["n"] == 3
        assert f"toy/{task}: {r['metric']} = {r['value']:.4f}" in out


def test_train_without_objective_is_a_config_error(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "toy:base"}))
    assert main(["train", str(path), "--out", str(tmp_path / "x")]) == 2
    assert "objective" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
