"""Evaluation: suite schema, the `paper` suite against lm-eval's index, unsafe-code gating, the evaluation
cache, Avg@k, and equality with lm-eval's own CLI. Real lm-eval on the tiny toy world; no fakes.

Time on 2 idle cores: fast tests ~5 s; slow ones ~2.5 min (index of lm-eval's tasks ~15 s, four small
hf evaluations, one lm-eval CLI run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import ConfigError, EvalConfig, RunConfig
from harness.config.suites import GenerationSettings, Suite, UnsafeCodeError, load_suite
from harness.eval import backends
from harness.eval.backends import LazyLM
from harness.eval.request import EvalRequest, build_request
from harness.eval.runner import evaluate, evaluate_suites
from harness.execution.launch import eval_command, request_command
from harness.runs.io import read_jsonl

SUITES = Path(__file__).resolve().parent.parent / "evaluation" / "suites"


# ------------------------------------------------------------------------------------------ schema


def test_entry_settings_inherit_suite_defaults_and_override_them():
    suite = Suite.model_validate(
        {
            "name": "s",
            "defaults": {"samples": 4, "temperature": 1.0, "max_gen_toks": 64},
            "tasks": [{"task": "a"}, {"task": "b", "samples": 1, "temperature": 0.0, "num_fewshot": 3}],
        }
    )
    a, b = (t.settings(suite.defaults) for t in suite.tasks)
    assert (a.samples, a.temperature, a.max_gen_toks, a.num_fewshot) == (4, 1.0, 64, None)
    assert a.generation_kwargs() == {"temperature": 1.0, "do_sample": True, "max_gen_toks": 64}
    assert (b.samples, b.temperature, b.max_gen_toks, b.num_fewshot) == (1, 0.0, 64, 3)
    assert b.generation_kwargs() == {"temperature": 0.0, "do_sample": False, "max_gen_toks": 64}
    # Nothing set: the task's own decoding is left alone.
    assert GenerationSettings().generation_kwargs() == {}


def test_samples_without_sampling_is_rejected_naming_the_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"name": "bad", "tasks": [{"task": "x", "samples": 16, "temperature": 0}]})
    )
    with pytest.raises(ConfigError) as e:
        load_suite(str(path))
    assert str(path) in str(e.value) and "samples: 16 needs sampling" in str(e.value)
    path.write_text(yaml.safe_dump({"name": "bad", "tasks": [{"task": "x", "temprature": 1}]}))
    with pytest.raises(ConfigError, match=r"field 'tasks.0.temprature'"):
        load_suite(str(path))


def test_shipped_suites_load_and_subsets_match_paper():
    paper = load_suite("paper")
    by_name = {t.task: t.settings(paper.defaults) for t in paper.tasks}
    covered = set()
    for name in ("math", "code", "reasoning"):
        sub = load_suite(name)
        for t in sub.tasks:
            assert t.task in by_name, f"{name}: {t.task} is not in paper"
            assert t.settings(sub.defaults) == by_name[t.task], f"{name}: {t.task} settings differ from paper"
            covered.add(t.task)
    assert covered == set(by_name)
    # The DFT recipe for math: Avg@16 at temperature 1.
    for t in paper.tasks:
        s = by_name[t.task]
        if t.domain == "math":
            assert (s.samples, s.temperature) == (16, 1.0)
        else:
            assert s.samples == 1 and s.temperature is None  # the task's own (greedy) decoding


@pytest.mark.slow
def test_paper_suite_names_exist_in_installed_lm_eval_index():
    """Offline: only lm-eval's YAML index is built (no dataset is loaded, HF_*_OFFLINE=1 in conftest)."""
    from lm_eval.tasks import TaskManager

    from harness.eval.entries import include_path

    indexes: dict[str | None, dict] = {}  # (paper / code: "@code", the sandboxed variants of the code tasks)
    for name in ("paper", "math", "code", "reasoning"):
        suite = load_suite(name)
        path = include_path(suite, None)
        if path not in indexes:
            indexes[path] = TaskManager(include_path=path).task_index
        index = indexes[path]
        for t in suite.tasks:
            assert t.task in index, f"suite {name}: '{t.task}' is not a task/group of the installed lm-eval"
            # The code tasks execute code: the suite flags them for the opt-in check before any loading.
            assert t.unsafe_code == (t.domain == "code"), t.task


# --------------------------------------------------------------------------------------- backends


def test_backend_auto_on_cpu_is_hf_and_vllm_uses_the_vllm_interpreter(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    assert backends.resolve_backend("auto") == "hf"
    cfg = RunConfig.model_validate({"model": "m", "eval": {"backend": "hf"}})
    assert eval_command(tmp_path, cfg)[0] == sys.executable
    assert eval_command(tmp_path, cfg)[-2:] == ["--backend", "hf"]
    fake_python = tmp_path / "python"
    fake_python.touch()
    monkeypatch.setenv(backends.VLLM_PYTHON_ENV, str(fake_python))
    cfg = RunConfig.model_validate({"model": "m", "eval": {"backend": "vllm"}})
    assert eval_command(tmp_path, cfg) == [
        str(fake_python),
        "-m",
        "harness.execution.worker",
        "eval",
        str(tmp_path),
        "--backend",
        "vllm",
    ]


def test_missing_vllm_venv_says_how_to_make_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(backends.VLLM_PYTHON_ENV, str(tmp_path / "nope" / "python"))
    with pytest.raises(ConfigError, match="make vllm"):
        backends.backend_python("vllm")
    assert main(["eval", "toy:base", "--backend", "vllm", "--out", str(tmp_path / "o")]) == 2
    assert "make vllm" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_request_is_resolved_up_front_and_survives_the_process_boundary(tmp_path, monkeypatch):
    """What `otr-harness eval MODEL ...` hands the worker: resolved settings, one output directory per
    suite, the log next to them; through JSON unchanged (unset suite fields stay unset: they inherit)."""
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    model = tmp_path / "model"
    model.mkdir()
    out = tmp_path / "o"
    request = build_request(str(model), suites=["math"], tasks="a, b", metric="acc", limit=3, out=str(out))
    assert [s.name for s in request.suites] == ["math", "tasks"]
    assert request.out_dirs == [(out / "math").resolve(), (out / "tasks").resolve()]
    assert request.log_file == out / "logs" / "eval.log"
    assert (request.model, request.backend, request.eval.limit) == (str(model), "hf", 3)
    path = tmp_path / "request.json"
    request.save(path)
    again = EvalRequest.load(path)
    assert again == request
    assert again.suites[0].tasks[0].model_fields_set == request.suites[0].tasks[0].model_fields_set
    assert request_command(path) == [sys.executable, "-m", "harness.execution.worker", "request", str(path)]
    with pytest.raises(ConfigError, match="--batch-size"):
        build_request(str(model), batch_size=0)
    assert not out.exists()  # nothing is written before the evaluation process runs


def test_new_eval_fields_keep_run_ids():
    """backend 'auto' (the new default) and the new fields at their defaults hash like the old config."""
    old = RunConfig.model_validate({"model": "m", "eval": {"backend": "hf"}}).config_hash()
    assert RunConfig.model_validate({"model": "m"}).config_hash() == old
    assert RunConfig.model_validate({"model": "m", "eval": {"allow_unsafe_code": True}}).config_hash() != old


# ----------------------------------------------------------------------------------- unsafe code


def test_unsafe_code_suite_fails_fast_with_how_to_enable(tmp_path, capsys):
    started = time.time()
    with pytest.raises(UnsafeCodeError) as e:
        # A model path that does not exist: the error must come before anything is loaded.
        evaluate_suites("/nonexistent/model", [load_suite("code")], [tmp_path / "code"], EvalConfig())
    msg = str(e.value)
    assert "humaneval_plus" in msg and "allow_unsafe_code: true" in msg and "--allow-unsafe-code" in msg
    assert time.time() - started < 2  # nothing was imported, indexed or loaded
    assert main(["eval", "toy:base", "--suite", "code", "--out", str(tmp_path / "o")]) == 2
    assert "--allow-unsafe-code" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "code").exists()


@pytest.mark.slow
def test_unsafe_code_from_lm_eval_task_config_fails_before_model_load(tmp_path, tiny_toy):
    """A suite entry without the flag whose lm-eval task says `unsafe_code: true` is caught too; with the
    opt-in the task runs (the sandbox that contains the code is tested in tests/test_sandbox.py)."""
    cfg, world = tiny_toy
    suite = Suite(name="s", include_path="@toy", builtin_tasks=False, tasks=[{"task": "toy_humaneval"}])
    with pytest.raises(UnsafeCodeError, match="toy_humaneval"):
        evaluate_suites("/nonexistent/model", [suite], [tmp_path / "s"], EvalConfig(), cfg)
    assert not (tmp_path / "s").exists()
    # With the opt-in, lm-eval runs it (it refuses unsafe_code tasks unless confirm_run_unsafe_code).
    suite = Suite(
        name="s",
        include_path="@toy",
        builtin_tasks=False,
        tasks=[{"task": "toy_code_function_id", "metric": "pass_at_1", "max_gen_toks": 16}],
    )
    ecfg = EvalConfig(allow_unsafe_code=True, limit=2, batch_size=2, backend="hf", cache=False)
    res = evaluate(str(world.base_model), suite, tmp_path / "s", ecfg, cfg)
    assert res["tasks"]["toy_code_function_id"]["n"] == 2 and res["settings"]["allow_unsafe_code"]


# ------------------------------------------------------------------------- cache, Avg@k, lm-eval CLI


def _suite(**math_settings) -> Suite:
    """toy_math_id (generation; 32 new tokens unless overridden, for speed) + toy_reasoning_mc_id."""
    math_settings.setdefault("max_gen_toks", 32)
    return Suite(
        name="small",
        include_path="@toy",
        builtin_tasks=False,
        tasks=[
            {"task": "toy_math_id", "domain": "math", "metric": "exact_match", **math_settings},
            {"task": "toy_reasoning_mc_id", "domain": "reasoning", "metric": "acc"},
        ],
    )


@pytest.fixture()
def eval_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OTR_HARNESS_EVAL_CACHE", str(tmp_path / "eval-cache"))
    return tmp_path / "eval-cache"


@pytest.mark.slow
def test_second_evaluation_is_served_from_cache_and_a_changed_setting_misses(
    tmp_path, tiny_toy, eval_cache, monkeypatch
):
    cfg, world = tiny_toy
    ecfg = EvalConfig(limit=4, batch_size=4, backend="hf")
    # Two suites sharing their entries (as `paper` and `math` do): each entry runs once, both get results.
    twin = _suite().model_copy(update={"name": "twin"})
    first, first_twin = evaluate_suites(
        str(world.base_model), [_suite(), twin], [tmp_path / "a", tmp_path / "a2"], ecfg, cfg
    )
    assert not any(r["cache_hit"] for r in first["tasks"].values())
    assert first_twin["tasks"] == first["tasks"]

    # Second time: no model may be loaded at all.
    def no_model(self):
        raise AssertionError("the model was loaded although everything is cached")

    with monkeypatch.context() as m:
        m.setattr(LazyLM, "get", no_model)
        started = time.time()
        second = evaluate(str(world.base_model), _suite(), tmp_path / "b", ecfg, cfg)
        elapsed = time.time() - started
    assert elapsed < 15, elapsed  # ~1-2 s on an idle machine
    for task, r in second["tasks"].items():
        assert r["cache_hit"]
        assert {k: v for k, v in r.items() if k != "cache_hit"} == {
            k: v for k, v in first["tasks"][task].items() if k != "cache_hit"
        }
        a = (tmp_path / "a" / f"samples_{task}.jsonl").read_text()
        assert (tmp_path / "b" / f"samples_{task}.jsonl").read_text() == a

    # A changed generation setting of one entry misses for that entry only.
    third = evaluate(str(world.base_model), _suite(max_gen_toks=8), tmp_path / "c", ecfg, cfg)
    assert not third["tasks"]["toy_math_id"]["cache_hit"]
    assert third["tasks"]["toy_reasoning_mc_id"]["cache_hit"]
    short = [s["resps"][0][0] for s in read_jsonl(tmp_path / "c" / "samples_toy_math_id.jsonl")]
    full = [s["resps"][0][0] for s in read_jsonl(tmp_path / "a" / "samples_toy_math_id.jsonl")]
    assert max(map(len, short)) < max(map(len, full))  # 8 new tokens instead of 32
    # ...and so does a different checkpoint (same files, one byte of the weights changed).
    copy = tmp_path / "model"
    subprocess.run(["cp", "-r", str(world.base_model), str(copy)], check=True)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    fourth = evaluate(str(copy), _suite(), tmp_path / "d", ecfg, cfg)
    assert not any(r["cache_hit"] for r in fourth["tasks"].values())


@pytest.mark.slow
def test_avg_at_k_runs_k_sampled_evaluations_and_reports_their_mean(tmp_path, tiny_toy, eval_cache):
    cfg, world = tiny_toy
    ecfg = EvalConfig(limit=4, batch_size=4, backend="hf", cache=False)
    suite = Suite(
        name="k",
        include_path="@toy",
        builtin_tasks=False,
        defaults={"samples": 2, "temperature": 1.0, "max_gen_toks": 24},
        tasks=[{"task": "toy_math_id", "metric": "exact_match"}],
    )
    res = evaluate(str(world.base_model), suite, tmp_path / "k", ecfg, cfg)["tasks"]["toy_math_id"]
    assert len(res["runs"]) == 2 and res["value"] == pytest.approx(sum(res["runs"]) / 2)
    assert res["metric"].endswith("(avg@2)")
    run0 = read_jsonl(tmp_path / "k" / "samples_toy_math_id.jsonl")
    run1 = read_jsonl(tmp_path / "k" / "samples_toy_math_id@1.jsonl")
    assert len(run0) == len(run1) == 4
    # Sampling at temperature 1 with different seeds: the two runs' generations differ.
    assert [s["resps"] for s in run0] != [s["resps"] for s in run1]
    # lm-eval really received the settings.
    gen_kwargs = run0[0]["arguments"][0][1]
    assert (gen_kwargs["temperature"], gen_kwargs["do_sample"], gen_kwargs["max_gen_toks"]) == (1.0, True, 24)
    assert gen_kwargs["until"] == ["\n\n", "Question:"]  # the task's own stop sequences are kept
    # Reproducible: the same call gives the same samples.
    again = evaluate(str(world.base_model), suite, tmp_path / "k2", ecfg, cfg)["tasks"]["toy_math_id"]
    assert again["runs"] == res["runs"]
    assert (tmp_path / "k2" / "samples_toy_math_id@1.jsonl").read_text() == (
        tmp_path / "k" / "samples_toy_math_id@1.jsonl"
    ).read_text()


@pytest.mark.slow
def test_harness_scores_equal_lm_eval_cli(tmp_path, tiny_toy, eval_cache):
    cfg, world = tiny_toy
    ecfg = EvalConfig(limit=8, batch_size=8, backend="hf", cache=False)
    ours = evaluate(str(world.base_model), _suite(), tmp_path / "ours", ecfg, cfg)["tasks"]
    cli_out = tmp_path / "cli"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={world.base_model},dtype=float32",
            "--include_path",
            str(world.tasks_dir),
            "--tasks",
            "toy_math_id,toy_reasoning_mc_id",
            "--limit",
            "8",
            "--batch_size",
            "8",
            "--device",
            "cpu",
            "--gen_kwargs",
            "max_gen_toks=32",  # what _suite() sets for toy_math_id (the mc task does not generate)
            "--output_path",
            str(cli_out),
        ],
        check=True,
        capture_output=True,
    )
    (results_file,) = cli_out.rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"]
    for task, r in ours.items():
        assert r["all_metrics"] == {k: v for k, v in theirs[task].items() if isinstance(v, int | float)}, task
        assert r["value"] == theirs[task][r["metric"]]


@pytest.mark.slow
def test_cli_evaluates_any_lm_eval_task_from_an_include_path(tmp_path, tiny_toy, eval_cache, capsys):
    """`otr-harness eval MODEL --tasks a,b --include-path DIR`: the user's own task YAMLs, no suite file."""
    cfg, world = tiny_toy
    out = tmp_path / "out"
    args = ["eval", str(world.base_model), "--tasks", "toy_reasoning_mc_id", "--include-path"]
    args += [str(world.tasks_dir), "--limit", "4", "--backend", "hf", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "tasks" / "results.json").read_text())
    r = results["tasks"]["toy_reasoning_mc_id"]
    assert r["metric"] == "acc,none" and r["n"] == 4  # no --metric: the first metric lm-eval reports
    assert f"tasks/toy_reasoning_mc_id: acc,none = {r['value']:.4f}" in capsys.readouterr().out
    assert "eval started" in (out / "logs" / "eval.log").read_text()
