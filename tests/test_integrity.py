"""Nothing silently lost: a stage is done only if what it wrote reads back (``harness.runs.integrity``).

Fast: synthetic run directories (results, samples logs, a model directory with real safetensors headers),
``sweep status`` and ``report`` through the CLI, the repair that ``sweep run`` does. Slow: the issue's case end
to end on the tiny toy world — one run's results.json cut in half: the report exits non-zero naming the run
and the file, ``sweep status`` says corrupt, ``sweep run`` redoes only that evaluation, and the final report
equals the original.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from harness import toy
from harness.cli import main
from harness.execution import stages as stages_mod
from harness.execution.plan import plan
from harness.runs import integrity
from harness.runs.io import atomic_write_json
from harness.runs.layout import EVAL, TRAIN, RunDir, SweepDir

REPO = Path(__file__).resolve().parent.parent


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _eval_outputs(run: RunDir, suite: str = "toy", tasks=("t_a", "t_b"), k: int = 1) -> None:
    """results.json + samples logs as the runner writes them (Avg@k: ``runs`` and k logs per task)."""
    records = {}
    for task in tasks:
        record = {"domain": "math", "split": "id", "metric": "exact_match,none", "value": 0.5, "n": 2}
        if k > 1:
            record["runs"] = [0.5] * k
        records[task] = record
        for i in range(k):
            lines = [{"doc_id": d, "filter": "none", "exact_match": float(d % 2)} for d in range(2)]
            path = run.samples_file(suite, task, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    atomic_write_json(run.results_file(suite), {"suite": suite, "tasks": records})


def _model_dir(directory: Path, shards: int = 1) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if shards == 1:
        save_file({"w": torch.arange(64, dtype=torch.float32)}, str(directory / "model.safetensors"))
        return
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({f"w{i}": torch.ones(8)}, str(directory / name))
        weight_map[f"w{i}"] = name
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _trained_run(root: Path, run_id: str = "sft-s0") -> RunDir:
    run = RunDir(root / run_id)
    run.path.mkdir(parents=True)
    cfg = {"model": "toy:base", "objective": {"name": "sft"}, "dataset": {"path": "toy:math/train"}}
    run.config_file.write_text(yaml.safe_dump(cfg))
    atomic_write_json(run.meta_file, {"variant": "sft", "sweep": "s"})
    _model_dir(run.final_model)
    atomic_write_json(run.summary_file, {"steps": 3})
    run.mark_done(TRAIN)
    _eval_outputs(run)
    run.mark_done(EVAL)
    return run


# ---------------------------------------------------------------------------------------- the files
def test_json_and_jsonl_checks(tmp_path):
    f = tmp_path / "a.json"
    assert integrity.json_problem(f) == "missing"
    f.write_text("")
    assert integrity.json_problem(f) == "empty file"
    f.write_text(json.dumps({"tasks": {"a": {"value": 1}}}))
    assert integrity.json_problem(f) is None
    _truncate(f)
    assert integrity.json_problem(f).startswith("not valid JSON (")
    log = tmp_path / "s.jsonl"
    log.write_text('{"a": 1}\n{"a": 2}\n')
    assert integrity.jsonl_problem(log) is None
    log.write_text('{"a": 1}\n{"a"')
    assert "truncated" in integrity.jsonl_problem(log) and "from byte 9" in integrity.jsonl_problem(log)
    log.write_text("")
    assert integrity.jsonl_problem(log) is None  # a task without documents


def test_safetensors_header_and_size(tmp_path):
    f = tmp_path / "m.safetensors"
    save_file({"w": torch.arange(100, dtype=torch.float32)}, str(f))
    assert integrity.safetensors_problem(f) is None
    for keep in (0.99, 0.5, 0.01):
        g = tmp_path / f"cut{keep}.safetensors"
        g.write_bytes(f.read_bytes()[: int(f.stat().st_size * keep)])
        assert integrity.safetensors_problem(g).startswith(("truncated", "unreadable")), keep


def test_model_directory_checks(tmp_path):
    good = tmp_path / "good"
    _model_dir(good, shards=3)
    assert integrity.model_dir_problems(good) == []
    (good / "model-00002-of-00003.safetensors").unlink()
    problems = integrity.model_dir_problems(good)
    assert [(p.name, why) for p, why in problems] == [
        ("model-00002-of-00003.safetensors", "missing (listed in model.safetensors.index.json)")
    ]
    bare = tmp_path / "bare"
    bare.mkdir()
    reasons = [why for _, why in integrity.model_dir_problems(bare)]
    assert reasons[0] == "missing" and "no weights" in reasons[1]
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text("{}")
    with zipfile.ZipFile(binary / "pytorch_model.bin", "w") as z:
        z.writestr("archive/data.pkl", b"x" * 1000)
    assert integrity.model_dir_problems(binary) == []
    args_only = tmp_path / "args-only"  # Trainer.save_model's training_args.bin is not the weights
    args_only.mkdir()
    (args_only / "config.json").write_text("{}")
    shutil.copy(binary / "pytorch_model.bin", args_only / "training_args.bin")
    assert [why for _, why in integrity.model_dir_problems(args_only)] == [
        "no weights (no *.safetensors or *.bin file)"
    ]
    _truncate(binary / "pytorch_model.bin")
    assert "not a readable torch archive" in integrity.model_dir_problems(binary)[0][1]
    assert integrity.model_dir_problems(tmp_path / "none") == [(tmp_path / "none", "missing")]


# ---------------------------------------------------------------------------------------- the stages
def test_a_done_run_reads_back_until_a_file_is_damaged(tmp_path):
    run = _trained_run(tmp_path)
    assert integrity.run_status(run, (TRAIN, EVAL)) == ("done", [])
    _truncate(run.results_file("toy"))
    status, problems = integrity.run_status(run, (TRAIN, EVAL))
    assert status == "corrupt" and len(problems) == 1
    assert problems[0].line().startswith("sft-s0 [eval]: eval/toy/results.json: not valid JSON (")


@pytest.mark.parametrize(
    ("damage", "stage", "file", "reason"),
    [
        (lambda r: _truncate(r.samples_file("toy", "t_b"), 0.7), EVAL, "eval/toy/samples_t_b.jsonl", "truncated"),
        (lambda r: r.samples_file("toy", "t_a").unlink(), EVAL, "eval/toy/samples_t_a.jsonl", "missing"),
        (lambda r: atomic_write_json(r.results_file("toy"), {"tasks": {}}), EVAL, "eval/toy/results.json", "no 'tasks'"),
        (
            lambda r: atomic_write_json(r.results_file("toy"), {"tasks": {"t_a": {"value": None}}}),
            EVAL, "eval/toy/results.json", "task 't_a' has no numeric 'value'",
        ),
        (lambda r: r.results_file("toy").unlink(), EVAL, "eval/toy/results.json", "missing"),
        (lambda r: _truncate(r.summary_file), TRAIN, "train/summary.json", "not valid JSON"),
        (lambda r: _truncate(r.final_model / "model.safetensors", 0.9), TRAIN, "train/final/model.safetensors", "truncated"),
        (lambda r: (r.final_model / "config.json").unlink(), TRAIN, "train/final/config.json", "missing"),
    ],
    ids=["samples-cut", "samples-missing", "no-tasks", "no-value", "results-missing", "summary-cut",
         "weights-cut", "model-config-missing"],
)  # fmt: skip
def test_each_kind_of_damage_is_named(tmp_path, damage, stage, file, reason):
    run = _trained_run(tmp_path)
    damage(run)
    status, problems = integrity.run_status(run, (TRAIN, EVAL))
    assert status == "corrupt"
    assert [(p.stage, p.relpath) for p in problems] == [(stage, file)]
    assert reason in problems[0].reason


def test_avg_at_k_needs_every_runs_log(tmp_path):
    run = RunDir(tmp_path / "base")
    _eval_outputs(run, k=3)
    assert integrity.eval_problems(run, ["toy"]) == []
    run.samples_file("toy", "t_a", 2).unlink()
    assert [p.relpath for p in integrity.eval_problems(run, ["toy"])] == ["eval/toy/samples_t_a@2.jsonl"]


def test_repair_sets_the_damaged_suite_aside_and_redoes_only_its_stage(tmp_path):
    run = _trained_run(tmp_path)
    _truncate(run.results_file("toy"))
    damaged = run.results_file("toy").read_bytes()
    lines = stages_mod.repair(run, (TRAIN, EVAL))
    assert len(lines) == 1 and lines[0][0] == EVAL
    assert "eval/toy/results.json: not valid JSON" in lines[0][1] and "moved aside to corrupt/" in lines[0][1]
    assert run.is_done(TRAIN) and not run.is_done(EVAL)  # only the evaluation is redone
    assert not run.eval_dir("toy").exists()  # the worker evaluates the suite again
    (kept,) = run.corrupt_dir.glob("*/eval/toy/results.json")
    assert kept.read_bytes() == damaged  # kept for inspection, byte for byte
    assert sorted(p.name for p in kept.parent.iterdir()) == [
        "results.json",
        "samples_t_a.jsonl",
        "samples_t_b.jsonl",
    ]
    assert stages_mod.repair(run, (TRAIN, EVAL)) == []  # nothing left to repair


def test_repair_of_an_unfinished_evaluation_sets_aside_a_damaged_suite_it_would_keep(tmp_path):
    """The worker keeps suites an earlier attempt finished (results present): a damaged one must go."""
    run = _trained_run(tmp_path)
    run.clear_done(EVAL)
    _truncate(run.samples_file("toy", "t_a"), 0.7)
    assert integrity.run_status(run, (TRAIN, EVAL))[0] == "partial"  # not done: nothing claims it is whole
    (line,) = stages_mod.repair(run, (TRAIN, EVAL))
    assert "eval/toy/samples_t_a.jsonl" in line[1] and not run.results_file("toy").exists()


def test_repair_of_a_damaged_model_redoes_training(tmp_path):
    run = _trained_run(tmp_path)
    _truncate(run.final_model / "model.safetensors", 0.9)
    (line,) = stages_mod.repair(run, (TRAIN, EVAL))
    assert line[0] == TRAIN and not run.is_done(TRAIN) and run.is_done(EVAL)
    assert list(run.corrupt_dir.glob("*/train/final/model.safetensors"))


# ------------------------------------------------------------------------------------ status, report
def _sweep_with_base(tmp_path: Path) -> tuple[Path, RunDir]:
    """A sweep directory (demo's base run only, evaluated) as `sweep run` leaves it."""
    data = yaml.safe_load((REPO / "sweeps" / "demo.yaml").read_text())
    data.update(variants={"sft": {"objective": {"name": "sft"}}}, seeds=[0])
    out = tmp_path / "runs" / "demo"
    out.mkdir(parents=True)
    SweepDir(out).sweep_file.write_text(yaml.safe_dump(data))
    pl = plan(SweepDir(out).sweep_file, out)
    base = next(p for p in pl.runs if not p.spec.config.is_training)
    stages_mod.freeze(base, "demo")
    _eval_outputs(base.run)
    base.run.mark_done(EVAL)
    atomic_write_json(SweepDir(out).plan_file, {"sweep": "demo", "runs": [p.run.run_id for p in pl.runs]})
    return out, base.run


def test_sweep_status_shows_a_corrupt_run_with_its_file(tmp_path, capsys):
    out, run = _sweep_with_base(tmp_path)
    assert main(["sweep", "status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "corrupt" not in text and "1 done" in text
    _truncate(run.results_file("toy"))
    assert main(["sweep", "status", str(out)]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith(run.run_id))
    assert row.split()[-1] == "corrupt" and "1 corrupt" in text
    assert f"corrupt: {run.run_id} [eval]: eval/toy/results.json: not valid JSON" in text


@pytest.mark.parametrize(
    ("damaged", "why"),
    [("results.json", "not valid JSON"), ("samples_t_b.jsonl", "truncated")],
    ids=["results-cut", "samples-cut"],
)
def test_report_names_unreadable_runs_and_exits_non_zero(tmp_path, capsys, damaged, why):
    out, run = _sweep_with_base(tmp_path)
    good = tmp_path / "good"
    assert main(["report", str(out), "--out", str(good)]) == 0
    capsys.readouterr()
    _truncate(run.eval_dir("toy") / damaged, 0.7)
    bad = tmp_path / "bad"
    assert main(["report", str(out), "--out", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"unreadable: {run.run_id} [eval]: eval/toy/{damaged}: {why}" in err
    assert "--allow-partial" in err.splitlines()[-1]
    md = (bad / "report.md").read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Unreadable runs" and f"{run.run_id} [eval]: eval/toy/{damaged}" in md
    assert "Runs: 0 of 2 done" in md and "No evaluation results yet" in md  # nothing averaged around it
    assert "Unreadable runs" in (bad / "report.html").read_text()
    assert "Unreadable" not in (good / "report.md").read_text()
    assert main(["report", str(out), "--out", str(bad), "--allow-partial"]) == 0
    assert "unreadable:" in capsys.readouterr().err  # named either way


# ------------------------------------------------------------------------------------------- end to end
def _tiny_sweep(toy_cfg) -> dict:
    return {
        "name": "integrity",
        "toy": toy_cfg.model_dump(mode="json"),
        "base": {
            "model": "toy:base",
            "dataset": toy.dataset_config(max_length=128, max_examples=16),
            "training": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_steps": 2},
            "eval": {"suites": ["toy"], "limit": 2, "batch_size": 8},
        },
        "variants": {"sft": {"objective": {"name": "sft"}}},
        "seeds": [0, 1],
        "evaluate_base": False,
    }


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], env=env, capture_output=True, text=True
    )


def _stage_starts(out: Path) -> dict[str, int]:
    return {
        str(f.relative_to(out)): f.read_text().count(" started ") for f in sorted(out.glob("*/logs/*.log"))
    }


def test_truncated_results_are_named_then_redone_to_the_same_report(tmp_path, tiny_toy):
    cfg, _ = tiny_toy
    sweep_file = tmp_path / "integrity.yaml"
    sweep_file.write_text(yaml.safe_dump(_tiny_sweep(cfg)))
    out, reports = tmp_path / "runs", tmp_path / "reports"
    env = {**os.environ, "OTR_HARNESS_EVAL_CACHE": str(tmp_path / "eval-cache")}
    first = _cli("sweep", "run", str(sweep_file), "--out", str(out), "--report-dir", str(reports), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    original = {name: (reports / name).read_bytes() for name in ("report.md", "results.csv")}
    starts = _stage_starts(out)
    victim = next(p for p in sorted(out.iterdir()) if p.name.startswith("sft-s1-"))
    results = victim / "eval" / "toy" / "results.json"
    _truncate(results)

    again = _cli("report", str(out), "--out", str(tmp_path / "partial"), env=env)
    assert again.returncode == 1
    assert f"unreadable: {victim.name} [eval]: eval/toy/results.json: not valid JSON" in again.stderr

    status = _cli("sweep", "status", str(out), env=env)
    assert status.returncode == 0
    assert f"corrupt: {victim.name} [eval]: eval/toy/results.json" in status.stdout
    assert (
        next(line for line in status.stdout.splitlines() if line.startswith(victim.name)).split()[-1]
        == "corrupt"
    )

    fixed = _cli("sweep", "run", str(sweep_file), "--out", str(out), "--report-dir", str(reports), env=env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "1 done (skipped), 1 to run (1 corrupt" in fixed.stdout
    assert f"corrupt {victim.name} [eval]: eval/toy/results.json" in fixed.stdout
    # Only that evaluation ran again: one more start in its eval log, none anywhere else.
    expected = {**starts, f"{victim.name}/logs/eval.log": starts[f"{victim.name}/logs/eval.log"] + 1}
    assert _stage_starts(out) == expected
    assert list((victim / "corrupt").glob("*/eval/toy/results.json"))  # kept for inspection
    assert {name: (reports / name).read_bytes() for name in original} == original
