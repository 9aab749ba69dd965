"""Sweep schema (zip groups, readable slugs), the shipped sweep files, and kill-and-resume of `sweep run`."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import toy
from harness.config import ConfigError, axis_label, expand_sweep, load_sweep_config
from harness.execution.plan import plan
from harness.paths import repo_root
from harness.runs.layout import RunDir

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
    "baselines.yaml": 9 * 3 + 1,
    "compute_matched.yaml": 3 * 3 + 1,
    "lr_tuned.yaml": 4 * 3 * 2 + 1,
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
        assert cfg.eval.suites == ["paper"] and cfg.eval.allow_unsafe_code  # its code tasks execute
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
    names = {s.config.objective.name for s in specs if s.config.is_training}
    # every token-level objective, and the RL baseline through TRL (issue 17)
    assert names == set(objectives.available()) | {"grpo"}


def test_compute_matched_gives_sft_more_steps():
    specs = {s.variant: s for s in expand_sweep(load_sweep_config(SWEEPS / "compute_matched.yaml"))}
    steps = {v: s.config.training_arguments()["max_steps"] for v, s in specs.items() if s.config.is_training}
    assert steps["sft_compute_matched"] > steps["sft"] == steps["otr"]


def test_prepare_cleans_what_a_killed_sweep_left_behind(tmp_path):
    """A SIGKILL between an atomic write's temp file and its rename leaves the temp: the next attempt removes
    it; a kill between meta.json and config.yaml must not leave a run without metadata."""
    from harness.execution import stages as sweep_mod

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
    sweep_mod.prepare(p, "demo")
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


def _stage_starts_total(out: Path) -> int:
    """How many stage attempts have started in the sweep directory (the header line of each stage log)."""
    return sum(log.read_text().count(" started ") for log in out.glob("*/logs/*.log"))


def _markers(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/status/*.done")}


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_results(tmp_path, tiny_toy):
    cfg, _ = tiny_toy
    sweep_file = _write(tmp_path, _tiny_sweep(cfg), "killme.yaml")
    ref_dir, out = tmp_path / "reference", tmp_path / "killed"

    ref = subprocess.run(_sweep_cmd(sweep_file, ref_dir), env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    expected = _results(ref_dir)
    assert len(expected) == 3  # base, sft, otr

    # Kill the whole process group (the sweep and its stage worker) at seeded random moments. A moment is
    # drawn in terms of progress, not wall time (a shared machine's speed varies too much for that): after
    # the r-th stage of this attempt has started (r = 0: during start-up), plus a random 0-4 s.
    rng = random.Random(1234)
    seen_markers: dict[str, int] = {}
    kills = 0
    for _ in range(3):
        before = _stage_starts_total(out)
        pending = 5 - len(_markers(out))  # base eval, sft train+eval, otr train+eval
        r = rng.randint(0, max(pending - 1, 0))
        delay = rng.uniform(0.0, 4.0) + (rng.uniform(0.5, 4.0) if r == 0 else 0.0)
        proc = subprocess.Popen(
            _sweep_cmd(sweep_file, out),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while proc.poll() is None and _stage_starts_total(out) - before < r:
                time.sleep(0.1)
            try:
                proc.wait(timeout=delay)
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
    assert kills >= 2, "the sweep finished before it could be killed"

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


# --- parallel local execution -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "gpus", "expected"),
    [
        (1, ["0", "1"], [{}]),  # one slot: the run sees every GPU (multi-GPU training)
        (2, [], [{"OMP_NUM_THREADS": "4"}] * 2),  # CPU (8 cores here): each process its share of them
        (3, [], [{"OMP_NUM_THREADS": "2"}] * 3),
        (16, [], [{"OMP_NUM_THREADS": "1"}] * 16),
        (2, ["0", "1"], [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]),
        (3, ["4", "7"], [{"CUDA_VISIBLE_DEVICES": g} for g in ("4", "7", "4")]),  # round-robin
    ],
)
def test_device_slots_give_each_parallel_run_its_gpu(n, gpus, expected, monkeypatch):
    from harness.execution.local import device_slots

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert device_slots(n, gpus, cpus=8) == expected
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting is left alone
    unset = [{k: v for k, v in slot.items() if k != "OMP_NUM_THREADS"} for slot in expected]
    assert device_slots(n, gpus, cpus=8) == unset


@pytest.mark.parametrize(
    ("env", "gpus"), [("0,1", ["0", "1"]), ("", []), ("-1", []), ("GPU-ab, GPU-cd", ["GPU-ab", "GPU-cd"])]
)
def test_visible_gpus_follow_cuda_visible_devices(monkeypatch, env, gpus):
    from harness.execution.local import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_gpus() == gpus


def test_a_run_held_by_another_process_is_skipped_not_duplicated(tmp_path):
    """execute_run takes the run's flock: while another process holds it, nothing runs and 'busy' is returned;
    the lock dies with its holder (here: a SIGKILLed process), so a killed sweep never blocks the next."""
    from harness.execution.stages import execute_run
    from harness.execution.stages import freeze as _freeze

    pl = plan(_write(tmp_path, _demo()), tmp_path / "runs")
    p = pl.runs[0]
    _freeze(p, "demo")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(p.run.path / "run.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert execute_run(p.run.path, p.stages) == "busy"
        assert not (p.run.path / "logs").exists() and p.run.status(p.stages) == "pending"
    finally:
        holder.kill()
        holder.wait()
    stop = __import__("threading").Event()
    stop.set()  # lock free again; a set stop event means: start no stage
    assert execute_run(p.run.path, p.stages, stop=stop) == "stopped"


def test_cli_rejects_bad_executor_options_with_exit_2(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "run", str(DEMO), "--max-parallel", "0"]) == 2
    assert "--max-parallel" in capsys.readouterr().err
    assert main(["sweep", "run", str(DEMO), "--no-wait"]) == 2
    assert "--no-wait" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _stage_intervals(out: Path) -> list[tuple[str, str, str, str, str]]:
    """(run id, stage, start, end, CUDA_VISIBLE_DEVICES) of every stage attempt, from the log headers."""
    found = []
    for log in sorted(out.glob("*/logs/*.log")):
        text = log.read_text()
        starts = re.findall(r"===== (\w+) started (\S+ \S+)(?: CUDA_VISIBLE_DEVICES=(\S+))? =====", text)
        ends = re.findall(r"===== (\w+) exited -?\d+ (\S+ \S+) =====", text)
        for (stage, t0, dev), (_, t1) in zip(starts, ends, strict=False):
            found.append((log.parents[1].name, stage, t0, t1, dev))
        assert len(starts) == len(ends), text
    return found


@pytest.mark.slow
def test_parallel_sweep_runs_each_stage_once_on_its_own_slot(tmp_path, tiny_toy):
    cfg, _ = tiny_toy
    sweep_file = _write(tmp_path, _tiny_sweep(cfg), "par.yaml")
    out = tmp_path / "par"
    env = {**_env(), "CUDA_VISIBLE_DEVICES": "0,1"}  # two "GPUs": on CPU torch ignores them, the slots do not
    res = subprocess.run(
        [*_sweep_cmd(sweep_file, out), "--max-parallel", "2"], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "local executor: 2 runs at once on GPUs 0, 1" in res.stdout
    assert "3/3" in res.stderr  # the progress bar counted every run once

    intervals = _stage_intervals(out)
    # Every stage ran exactly once: base eval, and train + eval of sft and otr.
    assert sorted((r.split("-")[0], s) for r, s, *_ in intervals) == sorted(
        [("base", "eval"), ("sft", "train"), ("sft", "eval"), ("otr", "train"), ("otr", "eval")]
    )
    assert {dev for *_, dev in intervals} == {"0", "1"}
    # Two runs were in flight at once: some stage started before another run's stage ended.
    overlapping = [(a, b) for a in intervals for b in intervals if a[0] != b[0] and a[2] <= b[2] < a[3]]
    assert overlapping, intervals
    for run_dir in (p for p in out.iterdir() if (p / "config.yaml").exists()):
        run = RunDir(run_dir)
        stages = ("eval",) if run_dir.name.startswith("base-") else ("train", "eval")
        assert all(run.is_done(s) for s in stages), run_dir.name
        assert (run.eval_dir("toy") / "results.json").exists()
    again = subprocess.run(
        [*_sweep_cmd(sweep_file, out), "--max-parallel", "2"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and "3 done (skipped), 0 to run" in again.stdout, again.stdout
    assert len(_stage_intervals(out)) == 5  # nothing ran again


# --- learning-rate tuning -----------------------------------------------------------------------------
def test_lr_tuned_sweep_runs_every_method_at_every_lr_and_seed():
    specs = expand_sweep(load_sweep_config(SWEEPS / "lr_tuned.yaml"))
    trained = [s for s in specs if s.config.is_training]
    groups = {s.tuning_group for s in trained}
    assert groups == {"sft", "dft", "otr", "otr_exact"} and specs[0].tuning_group is None
    for g in groups:
        pts = sorted(
            (s.config.training["learning_rate"], s.config.seed) for s in trained if s.tuning_group == g
        )
        assert pts == [(lr, seed) for lr in (3e-4, 1e-3, 3e-3) for seed in (0, 1)], g
    assert all("toy" in s.config.eval.suites for s in trained)
    assert [s.variant for s in trained[:2]] == ["sft-lr0.0003", "sft-lr0.0003"]


def test_tuning_group_keeps_other_grid_axes(tmp_path):
    data = _demo(
        variants={"otr": {"objective": {"name": "otr", "tau": 1.0}}},
        grid={"objective.k": [4, 16]},
        lr_tuning={"learning_rates": [1e-3, 3e-3], "select": {"suite": "toy", "task": "toy_math_val"}},
        seeds=[0],
    )
    specs = _expand(tmp_path, data)[1:]
    assert [(s.tuning_group, s.variant) for s in specs] == [
        ("otr-k4", "otr-k4-lr0.001"),
        ("otr-k4", "otr-k4-lr0.003"),
        ("otr-k16", "otr-k16-lr0.001"),
        ("otr-k16", "otr-k16-lr0.003"),
    ]


def test_meta_records_the_tuning_group(tmp_path):
    from harness.execution.stages import freeze as _freeze

    data = yaml.safe_load((SWEEPS / "lr_tuned.yaml").read_text())
    pl = plan(_write(tmp_path, data), tmp_path / "runs")
    p = next(r for r in pl.runs if r.spec.variant == "sft-lr0.0003")
    _freeze(p, "lr_tuned")
    assert json.loads((p.run.path / "meta.json").read_text()) == {
        "variant": "sft-lr0.0003",
        "sweep": "lr_tuned",
        "tuning_group": "sft",
    }


_TUNING = {"learning_rates": [1e-3, 3e-3], "select": {"suite": "toy", "task": "toy_math_val"}}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            {"lr_tuning": {**_TUNING, "learning_rates": [1e-3]}},
            "'lr_tuning.learning_rates': give at least two",
        ),
        ({"lr_tuning": {**_TUNING, "learning_rates": [1e-3, -1.0]}}, "'lr_tuning.learning_rates'"),
        ({"lr_tuning": {**_TUNING, "select": {"suite": "toy"}}}, "'lr_tuning.select.task'"),
        (
            {"lr_tuning": {**_TUNING, "select": {"suite": "toy", "task": "toy_math_val", "mode": "best"}}},
            "'lr_tuning.select.mode'",
        ),
        (
            {"lr_tuning": {**_TUNING, "select": {"suite": "toy", "task": "toy_math_id"}}},
            "test task (split: id)",
        ),
        ({"lr_tuning": {**_TUNING, "select": {"suite": "toy", "task": "nope"}}}, "has no task 'nope'"),
        ({"lr_tuning": {**_TUNING, "select": {"suite": "nope", "task": "x"}}}, "'lr_tuning.select.suite'"),
        (
            {"lr_tuning": {**_TUNING, "select": {**_TUNING["select"], "metric": "acc"}}},
            "'lr_tuning.select.metric'",
        ),
        ({"lr_tuning": _TUNING, "grid": {"training.learning_rate": [1e-3]}}, "'grid.training.learning_rate'"),
        (
            {
                "lr_tuning": _TUNING,
                "variants": {"sft": {"objective": {"name": "sft"}, "training": {"learning_rate": 1e-3}}},
            },
            "'variants.sft.training.learning_rate'",
        ),
    ],
)
def test_bad_lr_tuning_fails_with_one_line_naming_the_field(tmp_path, change, needle):
    path = _write(tmp_path, _demo(**change))
    with pytest.raises(ConfigError) as err:
        expand_sweep(load_sweep_config(path), str(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and needle in msg, msg


def test_lr_tuning_needs_the_selection_suite_evaluated(tmp_path, monkeypatch):
    import harness.config.sweep as ev

    real = ev.load_suite
    other = real("toy").model_copy(update={"name": "other"})
    monkeypatch.setattr(ev, "load_suite", lambda name: other if name == "other" else real(name))
    data = _demo(lr_tuning={**_TUNING, "select": {"suite": "other", "task": "toy_math_val"}})
    with pytest.raises(ConfigError, match=r"'variants\.\w+\.eval\.suites'.*suite 'other'"):
        _expand(tmp_path, data)


# --- the malformed sweep files, through the CLI ------------------------------------------------
@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(bogus=1), "bogus"),  # unknown key
        (lambda d: d.update(seeds="zero"), "seeds"),  # wrong type
        (lambda d: d["base"]["training"].update(max_steps="many"), "base.training.max_steps"),  # wrong type
        (
            lambda d: d["variants"]["sft"].update(training={"learning_rate": "1e-3"}),
            "variants.sft.training.learning_rate",
        ),
        (lambda d: d.update(grid={"training.bf16": ["yes"]}), "training.bf16 (swept)"),
        (lambda d: d["variants"]["otr"]["objective"].update(k=0), "k"),  # K = 0
        (lambda d: d["variants"]["otr"]["objective"].update(tau=0), "tau"),  # tau <= 0
        (lambda d: d["variants"]["otr"]["objective"].update(tau=-1.0), "tau"),
        (lambda d: d["variants"]["otr"]["objective"].update(name="otrr"), "objective"),  # unknown method
        (lambda d: d.update(grid={"objective.k": []}), "grid"),  # empty grid axis
        (lambda d: d["base"]["dataset"].pop("path"), "dataset.path"),  # missing dataset field
        (lambda d: d["base"].pop("dataset"), "dataset"),
        (lambda d: d["base"]["dataset"].update(path="data/missing.jsonl"), "dataset.path"),  # no such file
    ],
)
def test_malformed_sweep_is_one_line_exit_2_and_nothing_on_disk(tmp_path, monkeypatch, capsys, mutate, field):
    from harness.cli import main

    data = _demo()
    mutate(data)
    src = tmp_path / "src"
    src.mkdir()
    path = _write(src, data)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for cmd in (["sweep", "plan", str(path)], ["sweep", "run", str(path)]):
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert "field '" in err and field in err and str(path) in err, err
    assert list(work.iterdir()) == []  # no runs/, no reports/
