"""Sweep schema (zip groups, readable slugs), the shipped sweep files, and kill-and-resume of `sweep run`."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import toy
from harness.config import ConfigError, axis_label, expand_sweep, load_sweep_config
from harness.paths import repo_root
from harness.rundir import RunDir
from harness.sweep import plan

SWEEPS = repo_root() / "sweeps"
DEMO = SWEEPS / "demo.yaml"


def _write(tmp_path: Path, data: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _demo(**changes) -> dict:
    data = yaml.safe_load(DEMO.read_text())
    data.update(changes)
    return data


def _expand(tmp_path: Path, data: dict):
    path = _write(tmp_path, data)
    return expand_sweep(load_sweep_config(path), str(path))


# --- zip groups ---------------------------------------------------------------------------------------
def test_zip_axes_move_together(tmp_path):
    data = _demo(
        variants={"otr": {"objective": {"name": "otr", "k": 4, "tau": 1.0}}},
        zip=[{"objective.beta": [-0.1, 0.0], "training.learning_rate": [1e-3, 1.1e-3]}],
        seeds=[0],
    )
    specs = _expand(tmp_path, data)[1:]
    pairs = [(s.config.objective.params["beta"], s.config.training["learning_rate"]) for s in specs]
    assert pairs == [(-0.1, 1e-3), (0.0, 1.1e-3)]  # not the 4 of a cartesian product
    assert [s.variant for s in specs] == ["otr-beta-0.1-lr0.001", "otr-beta0.0-lr0.0011"]


def test_zip_groups_combine_cartesianly_with_grid_and_each_other(tmp_path):
    data = _demo(
        variants={"otr": {"objective": {"name": "otr"}}, "exact": {"objective": {"name": "otr_exact"}}},
        grid={"objective.tau": [1.0, 1.2]},
        zip=[
            {"objective.beta": [-0.1, 0.0], "training.learning_rate": [1e-3, 1.1e-3]},
            {"training.max_steps": [10, 20, 30], "training.warmup_steps": [0.0, 0.1, 0.2]},
        ],
        seeds=[0, 1],
    )
    specs = _expand(tmp_path, data)
    assert specs[0].variant == "base"
    trained = specs[1:]
    assert len(trained) == 2 * 2 * 2 * 3 * 2  # variants x tau x zip1 x zip2 x seeds
    points = {
        (
            s.variant.split("-")[0],
            s.config.objective.params["tau"],
            s.config.objective.params["beta"],
            s.config.training["learning_rate"],
            s.config.training["max_steps"],
            s.config.training["warmup_steps"],
            s.config.seed,
        )
        for s in trained
    }
    assert len(points) == len(trained)
    for _, _, beta, lr, steps, warmup, _ in points:
        assert (beta, lr) in {(-0.1, 1e-3), (0.0, 1.1e-3)}
        assert (steps, warmup) in {(10, 0.0), (20, 0.1), (30, 0.2)}
    assert len({s.run_id for s in specs}) == len(specs)
    ids = [s.run_id for s in trained]
    assert any(i.startswith("otr-tau1.2-beta0.0-lr0.0011-steps20-warmup0.1-s1-") for i in ids), ids


@pytest.mark.parametrize(
    ("zip_value", "needle"),
    [
        ([{"objective.beta": [-0.1, 0.0], "training.learning_rate": [1e-3]}], "zip group 0"),
        ([{"objective.tau": [1.0]}, {"objective.beta": [0.0, 0.1], "objective.k": [1]}], "zip group 1"),
        ([{}], "zip group 0"),
        ([{"objective.beta": [], "training.learning_rate": []}], "no values"),
        ([{"objective.k": [1, 2]}, {"objective.k": [4, 8]}], "'objective.k' is already swept"),
        ({"objective.k": [1, 2]}, "zip"),  # a mapping, not a list of groups
    ],
)
def test_bad_zip_groups_fail_with_one_line_naming_the_group(tmp_path, zip_value, needle):
    data = _demo(variants={"otr": {"objective": {"name": "otr"}}}, zip=zip_value)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        expand_sweep(load_sweep_config(path), str(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "'zip" in msg and needle in msg, msg


def test_zip_axis_also_in_grid_is_rejected(tmp_path):
    data = _demo(
        variants={"otr": {"objective": {"name": "otr"}}},
        grid={"objective.beta": [0.0]},
        zip=[{"objective.beta": [0.0, 0.1], "objective.k": [1, 2]}],
    )
    with pytest.raises(ConfigError, match=r"zip group 0.*'objective.beta' is already swept"):
        _expand(tmp_path, data)


def test_invalid_value_in_zip_names_the_variant_and_field(tmp_path):
    data = _demo(
        variants={"otr": {"objective": {"name": "otr"}}},
        zip=[{"objective.k": [4, 0], "objective.tau": [1, 2]}],
    )
    with pytest.raises(ConfigError, match=r"variants\.otr.*k must be >= 1"):
        _expand(tmp_path, data)


# --- readable slugs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "label"),
    [
        ("training.learning_rate", 1e-3, "lr0.001"),
        ("training.learning_rate", 5e-5, "lr5e-5"),
        ("training.learning_rate", 1.1e-3, "lr0.0011"),
        ("objective.beta", -0.1, "beta-0.1"),
        ("objective.k", 256, "k256"),
        ("objective.tau", 1.0, "tau1.0"),
        ("training.per_device_train_batch_size", 8, "bs8"),
        ("training.bf16", True, "bf16true"),
        ("dataset.max_examples", None, "nnone"),
        ("objective", {"name": "otr", "k": 4}, "objectiveotr_k4"),
        ("eval.suites", ["toy", "paper"], "suitestoy_paper"),
        ("training.learning_rate", 1e-300, "lr1e-300"),
    ],
)
def test_axis_labels_are_short_and_readable(key, value, label):
    assert axis_label(key, value) == label


def test_run_ids_are_filesystem_safe_and_bounded(tmp_path):
    data = _demo(
        variants={"otr": {"objective": {"name": "otr"}}},
        grid={"dataset.prompt_format": ["Q/{prompt} A: " + "x" * 300, "{prompt}"]},
        seeds=[0],
    )
    specs = _expand(tmp_path, data)
    for s in specs:
        assert len(s.run_id) <= 80 + 9 and "/" not in s.run_id and " " not in s.run_id, s.run_id
    assert len({s.run_id for s in specs}) == len(specs)


def test_demo_run_ids_unchanged_by_zip_support():
    # Existing sweep directories must keep resolving to the same run ids (slug + config hash).
    ids = [s.run_id.rsplit("-", 1)[0] for s in expand_sweep(load_sweep_config(DEMO))]
    assert ids == ["base", "sft-s0", "sft-s1", "otr-s0", "otr-s1"]


def test_seeds_share_validation_but_not_identity(tmp_path):
    specs = _expand(tmp_path, _demo(seeds=[3, 1, 2]))
    otr = [s for s in specs if s.variant == "otr"]
    assert [s.config.seed for s in otr] == [3, 1, 2]
    assert len({s.config.config_hash() for s in otr}) == 3
    dup = _demo(seeds=[1, 1])
    with pytest.raises(ConfigError, match="same config"):
        _expand(tmp_path, dup)


# --- the shipped sweeps -------------------------------------------------------------------------------
SHIPPED = sorted(p.relative_to(SWEEPS).as_posix() for p in SWEEPS.rglob("*.yaml"))
EXPECTED_RUNS = {  # trained runs + the base model
    "demo.yaml": 5,
    "ablate_k.yaml": 7 * 3 + 1,
    "ablate_temperature.yaml": 2 * 5 * 2 + 1,
    "ablate_beta.yaml": 2 * 9 * 2 + 1,
    "baselines.yaml": 7 * 3 + 1,
    "compute_matched.yaml": 3 * 3 + 1,
}


def test_every_expected_sweep_is_shipped():
    assert set(EXPECTED_RUNS) <= set(SHIPPED)
    assert len([s for s in SHIPPED if s.startswith("paper/")]) == 8  # 4 models x 2 datasets


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_sweep_plans(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # planning is config validation only: no network
    pl = plan(SWEEPS / name, tmp_path / "runs")
    specs = [p.spec for p in pl.runs]
    assert len({s.run_id for s in specs}) == len(specs)
    assert not (tmp_path / "runs").exists()  # planning writes nothing
    if name in EXPECTED_RUNS:
        assert len(specs) == EXPECTED_RUNS[name]
    for s in specs:
        ds = s.config.dataset
        if ds is not None and ds.template == "plain":  # the formats must render (str.format braces)
            ds.prompt_format.format(prompt="p")
            ds.response_format.format(response="r")
    if name.startswith("paper/"):
        _check_paper_recipe(specs)


def _check_paper_recipe(specs):
    """The DFT recipe of otr.md §3 in every trained run of a paper sweep."""
    trained = [s for s in specs if s.config.is_training]
    assert {s.config.objective.name for s in trained} == {"sft", "dft", "otr", "otr_exact"}
    for s in trained:
        cfg = s.config
        args = cfg.training_arguments()
        assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] == 256
        expected = {
            "learning_rate": 5e-5,
            "adam_beta1": 0.9,
            "adam_beta2": 0.95,
            "weight_decay": 0.01,
            "warmup_steps": 0.1,
            "lr_scheduler_type": "cosine",
            "max_grad_norm": 1.0,
            "bf16": True,
            "num_train_epochs": 1,
        }
        assert {k: args.get(k) for k in expected} == expected
        assert cfg.dataset.max_length == 2048 and cfg.dataset.max_examples == 100_000
        assert cfg.dataset.path in {"open-r1/OpenR1-Math-220k", "AI-MO/NuminaMath-CoT"}
        assert (cfg.dataset.prompt_field, cfg.dataset.response_field) == ("problem", "solution")
        assert cfg.model in {
            "Qwen/Qwen2.5-Math-1.5B",
            "Qwen/Qwen2.5-7B",
            "Qwen/Qwen3-4B-Base",
            "meta-llama/Llama-3.2-3B",
        }
        assert cfg.toy is None


def test_ablate_beta_pairs_beta_with_rescaled_learning_rate():
    specs = expand_sweep(load_sweep_config(SWEEPS / "ablate_beta.yaml"))
    points = {
        (s.config.objective.params["beta"], s.config.training["learning_rate"])
        for s in specs
        if s.variant.startswith("otr-")
    }
    lr0 = 1e-3
    for beta in (-0.5, -0.2, -0.1, 0.1):
        assert (beta, lr0) in points
        twin = [lr for b, lr in points if b == 0.0 and lr == pytest.approx(lr0 / (1 - beta), rel=1e-4)]
        assert len(twin) == 1, (beta, sorted(points))
    assert all(s.config.objective.params["tau"] == 1.0 for s in specs if s.config.is_training)


def test_ablate_k_covers_k_and_exact():
    specs = expand_sweep(load_sweep_config(SWEEPS / "ablate_k.yaml"))
    ks = {
        s.config.objective.params.get("k")
        for s in specs
        if s.config.is_training and s.variant.startswith("otr_k")
    }
    assert ks == {1, 4, 16, 64, 256}
    assert {s.config.objective.name for s in specs if s.config.is_training} == {"sft", "otr", "otr_exact"}


def test_baselines_cover_every_objective():
    from harness import objectives

    specs = expand_sweep(load_sweep_config(SWEEPS / "baselines.yaml"))
    assert {s.config.objective.name for s in specs if s.config.is_training} == set(objectives.available())


def test_compute_matched_gives_sft_more_steps():
    specs = {s.variant: s for s in expand_sweep(load_sweep_config(SWEEPS / "compute_matched.yaml"))}
    steps = {v: s.config.training_arguments()["max_steps"] for v, s in specs.items() if s.config.is_training}
    assert steps["sft_compute_matched"] > steps["sft"] == steps["otr"]


def test_prepare_cleans_what_a_killed_sweep_left_behind(tmp_path):
    """A SIGKILL between an atomic write's temp file and its rename leaves the temp: the next attempt removes
    it; a kill between meta.json and config.yaml must not leave a run without metadata."""
    from harness import sweep as sweep_mod

    data = _demo()
    pl = plan(_write(tmp_path, data), tmp_path / "runs")
    p = pl.runs[1]
    run = p.run.path
    (run / "eval" / ".toy.abc123.tmp").mkdir(parents=True)
    (run / "eval" / ".toy.abc123.tmp" / "results.json").write_text("{")
    (run / "train" / ".final.tmp").mkdir(parents=True)
    (run / "status").mkdir()
    (run / "status" / ".train.done.x1y2.tmp").write_text("")
    p.run.write_config(p.spec.config)  # config written, then killed before meta.json (old write order)
    sweep_mod._prepare(p, "demo")
    assert sorted(q.relative_to(run).as_posix() for q in run.rglob("*") if q.is_file()) == [
        "config.yaml",
        "meta.json",
    ]
    assert json.loads((run / "meta.json").read_text()) == {"variant": p.spec.variant, "sweep": "demo"}


# --- kill and resume ----------------------------------------------------------------------------------
def _tiny_sweep(toy_cfg) -> dict:
    return {
        "name": "killme",
        "toy": toy_cfg.model_dump(mode="json"),
        "base": {
            "model": "toy:base",
            "dataset": toy.dataset_config(max_length=128, max_examples=32),
            "training": {
                "learning_rate": 1e-3,
                "per_device_train_batch_size": 4,
                "max_steps": 3,
                "logging_steps": 1,
            },
            "eval": {"suites": ["toy"], "limit": 3, "batch_size": 8},
        },
        "variants": {
            "sft": {"objective": {"name": "sft"}},
            "otr": {"objective": {"name": "otr", "k": 4, "tau": 1.2, "beta": -0.1}},
        },
        "seeds": [0],
    }


def _sweep_cmd(sweep_file: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness.cli",
        "sweep",
        "run",
        str(sweep_file),
        "--out",
        str(out),
        "--no-report",
    ]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _results(out: Path) -> dict[str, dict]:
    """run id -> {suite: {task: (value, n)}} from every results.json of the sweep."""
    res: dict[str, dict] = {}
    for f in sorted(out.glob("*/eval/*/results.json")):
        tasks = json.loads(f.read_text())["tasks"]
        res.setdefault(f.parents[2].name, {})[f.parent.name] = {
            t: (r["value"], r["n"]) for t, r in sorted(tasks.items())
        }
    return res


def _markers(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/status/*.done")}


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_results(tmp_path, tiny_toy):
    cfg, _ = tiny_toy
    sweep_file = _write(tmp_path, _tiny_sweep(cfg), "killme.yaml")
    ref_dir, out = tmp_path / "reference", tmp_path / "killed"

    t0 = time.monotonic()
    ref = subprocess.run(_sweep_cmd(sweep_file, ref_dir), env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    full_time = time.monotonic() - t0
    expected = _results(ref_dir)
    assert len(expected) == 3  # base, sft, otr

    # Kill the whole process group (the sweep and its stage worker) at seeded random moments of the run.
    rng = random.Random(1234)
    seen_markers: dict[str, int] = {}
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(
            _sweep_cmd(sweep_file, out),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=rng.uniform(0.1, 0.5) * full_time)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        finally:
            if proc.poll() is None:  # pragma: no cover - only if the assertion machinery itself failed
                os.killpg(proc.pid, signal.SIGKILL)
        markers = _markers(out)
        # A stage marked done is never redone: its marker is not rewritten by a later attempt.
        assert {k: v for k, v in markers.items() if k in seen_markers} == seen_markers
        seen_markers = markers
    assert kills >= 2, "the sweep finished before it could be killed: raise the kill window"

    final = subprocess.run(_sweep_cmd(sweep_file, out), env=_env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stdout + final.stderr
    again = subprocess.run(_sweep_cmd(sweep_file, out), env=_env(), capture_output=True, text=True)
    assert again.returncode == 0 and "3 done (skipped), 0 to run" in again.stdout, again.stdout

    # Every run done exactly once, with the same results as the uninterrupted sweep.
    markers = _markers(out)
    assert {k: v for k, v in markers.items() if k in seen_markers} == seen_markers
    run_ids = sorted(p.name for p in ref_dir.iterdir() if p.is_dir())
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == run_ids
    for run_id in run_ids:
        run = RunDir(out / run_id)
        stages = ("eval",) if run_id.startswith("base-") else ("train", "eval")
        assert all(run.is_done(s) for s in stages) and not any(run.is_failed(s) for s in stages), run_id
        assert json.loads((run.path / "meta.json").read_text())["sweep"] == "killme"
        assert len(list((run.path / "status").iterdir())) == len(stages)
    assert _results(out) == expected

    # Nothing half-written is left behind.
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert leftovers == []
    for f in out.rglob("*.json"):
        json.loads(f.read_text())  # every JSON file is whole
