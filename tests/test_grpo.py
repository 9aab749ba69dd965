"""GRPO through TRL's GRPOTrainer as a method of the harness (harness/training/grpo.py).

Fast: the method's registry entry and parameters, the GRPO-specific config rules, the prompts it trains on,
the GRPOConfig it builds, and that the harness imports, plans and fails in one line without TRL.
Slow (tiny toy world): a GRPO run killed after a checkpoint resumes to the weights of an uninterrupted
run; a sweep with sft + grpo trains, evaluates and reports GRPO's generated tokens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from harness import objectives, toy
from harness.config import ConfigError, DatasetConfig, parse_run_config
from harness.objectives import params
from harness.runs.layout import RunDir
from harness.training import grpo

TRAINING = {
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 4,
    "max_steps": 6,
    "logging_steps": 1,
    "optim": "adamw_torch",
    "warmup_steps": 0,
}


def _cfg(toy_cfg=None, objective: dict | None = None, **training) -> dict:
    d = {
        "model": "toy:base",
        "dataset": toy.dataset_config(max_examples=4),
        # beta > 0: a KL term (logged as `kl`) and a reference model, the whole of TRL's GRPO path
        "objective": {"name": "grpo", "num_generations": 2, "max_completion_length": 12, "beta": 0.04}
        | (objective or {}),
        "training": {**TRAINING, **training},
    }
    if toy_cfg is not None:
        d["toy"] = toy_cfg.model_dump(mode="json")
    return d


# ------------------------------------------------------------------------------------------ registry
def test_grpo_is_a_method_with_its_own_trainer_and_no_formula():
    assert params.trainer_of("grpo") == "grpo" and params.trainer_of("sft") == "objective"
    assert "grpo" in params.methods() and "grpo" not in objectives.available()
    assert "grpo" not in objectives.OBJECTIVES  # the formula registry does not know it
    assert not objectives.is_sampled("grpo") and objectives.samples_per_token("grpo") == 0
    d = objectives.validate_params("grpo", {})
    # TRL's GRPOConfig defaults
    assert (d.num_generations, d.max_completion_length, d.beta, d.loss_type) == (8, 512, 0.0, "dapo")
    assert d.reward == "auto" and d.use_vllm is False


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"num_generations": 1}, "objective 'grpo': num_generations must be >= 2 (got 1)"),
        ({"reward": "exact"}, "objective 'grpo': reward: input should be 'auto', 'toy' or 'math_verify'"),
        ({"beta": -0.1}, "objective 'grpo': beta must be >= 0.0 (got -0.1)"),
        ({"k": 4}, "objective 'grpo': unknown parameter 'k'; valid: beta, epsilon"),
    ],
)
def test_grpo_parameter_errors_are_one_line(given, message):
    with pytest.raises(ValueError) as info:
        objectives.validate_params("grpo", given)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"objective": {"num_generations": 3}},
            "objective.num_generations: 3 must divide the completions per optimizer step, "
            "training.per_device_train_batch_size x gradient_accumulation_steps x processes = 4",
        ),
        (
            {"objective": {"num_iterations": 2}, "training": {"save_strategy": "steps", "save_steps": 3}},
            "training.save_steps: 3 must be a multiple of objective.num_iterations (2)",
        ),
        ({"dataset": {"packing": True}}, "dataset.packing: GRPO trains on generated completions"),
        ({"loss_normalization": "sequences"}, "loss_normalization: applies to the token-level objectives"),
    ],
)
def test_grpo_config_rules(change, message):
    d = _cfg()
    d["objective"] |= change.get("objective", {})
    d["training"] |= change.get("training", {})
    d["dataset"] |= change.get("dataset", {})
    if "loss_normalization" in change:
        d["loss_normalization"] = change["loss_normalization"]
    with pytest.raises(ConfigError) as info:
        grpo.check_config(parse_run_config(d))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    grpo.check_config(parse_run_config(_cfg()))  # the unchanged config passes


@pytest.mark.parametrize(
    ("per_device", "accum", "processes", "ok"), [(4, 1, 2, True), (2, 2, 2, True), (3, 1, 2, False)]
)
def test_grpo_groups_count_every_process(per_device, accum, processes, ok):
    """8 completions per prompt: per-device batch x accumulation x processes must hold whole groups."""
    d = _cfg(objective={"num_generations": 8}, per_device_train_batch_size=per_device)
    d["training"]["gradient_accumulation_steps"] = accum
    d["launcher"] = {"num_processes": processes}
    if ok:
        grpo.check_config(parse_run_config(d))
    else:
        with pytest.raises(ConfigError, match="= 6 "):
            grpo.check_config(parse_run_config(d))


def test_grpo_config_is_trls_with_the_harness_recipe(tmp_path):
    cfg = parse_run_config(_cfg(objective={"temperature": 0.7, "reward": "toy"}))
    args = grpo.grpo_arguments(cfg, str(tmp_path))
    assert type(args).__name__ == "GRPOConfig"
    assert (args.num_generations, args.max_completion_length, args.beta, args.temperature) == (
        2,
        12,
        0.04,
        0.7,
    )
    # the run's training block and the harness's recipe defaults, not TRL's (lr 1e-6, bf16, checkpointing)
    assert (args.learning_rate, args.adam_beta2, args.weight_decay, args.seed) == (1e-3, 0.95, 0.01, 0)
    assert args.bf16 is False and args.gradient_checkpointing is False and args.log_completions is False
    assert args.remove_unused_columns is False  # the reward reads the `solution` column
    checkpointed = parse_run_config(_cfg(gradient_checkpointing=True))
    assert grpo.grpo_arguments(checkpointed, str(tmp_path)).gradient_checkpointing is True


def test_use_vllm_passes_through_and_needs_vllm(tmp_path, monkeypatch):
    cfg = parse_run_config(_cfg(objective={"use_vllm": True, "vllm_mode": "server"}))
    args = grpo.grpo_arguments(cfg, str(tmp_path))
    assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization) == (True, "server", 0.3)
    monkeypatch.setitem(sys.modules, "vllm", None)  # an environment without vLLM
    with pytest.raises(ConfigError, match=r"^objective.use_vllm: vLLM is not installed"):
        grpo.check_vllm(cfg)
    grpo.check_vllm(parse_run_config(_cfg()))  # transformers' generate needs nothing more


class _ChatTokenizer:
    chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_prompts_are_the_sft_prompts_and_the_references(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"q": "1 + 2?", "a": "1 + 2 = 3\n#### 3"}, {"q": "2 + 2?", "a": "#### 4"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = DatasetConfig(
        path=str(data), prompt_field="q", response_field="a", prompt_format="Q: {prompt}\nA:"
    )
    stats: dict = {}
    ds = grpo.build_prompts(plain, str(data), None, "toy", stats, quiet=True)
    assert ds["prompt"] == ["Q: 1 + 2?\nA:", "Q: 2 + 2?\nA:"] and ds["solution"] == [r["a"] for r in rows]
    assert stats == {"num_examples": 2, "num_truncated": 0, "num_no_response": 0}
    # chat: the conversation, which TRL renders with the chat template and its generation prompt
    chat = plain.model_copy(update={"template": "chat"})
    ds = grpo.build_prompts(chat, str(data), _ChatTokenizer(), "toy", quiet=True)
    assert ds["prompt"][0] == [{"role": "user", "content": "1 + 2?"}]
    # messages: everything before the last assistant turn; the reference is that turn
    conv = tmp_path / "c.jsonl"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "#### 1"}]
    conv.write_text(json.dumps({"messages": msgs}) + "\n")
    mcfg = DatasetConfig(path=str(conv), messages_field="messages")
    ds = grpo.build_prompts(mcfg, str(conv), _ChatTokenizer(), "toy", quiet=True)
    assert ds["prompt"] == [[msgs[0]]] and ds["solution"] == ["#### 1"]
    # a reference the toy reward cannot score is a data error, named before training
    rows[1]["a"] = "four"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"^dataset.response_field: example 1 has no '#### N' final answer"):
        grpo.build_prompts(plain, str(data), None, "toy", quiet=True)
    grpo.build_prompts(plain, str(data), None, "math_verify", quiet=True)  # parsed during training instead


def test_sweep_preflight_checks_a_grpo_run_even_beside_an_sft_run_of_the_same_settings(tmp_path, monkeypatch):
    """The sweep checks each distinct setting once; a grpo run's checks (TRL, its parameters, the reward's
    references) are not an sft run's, so it is never skipped as 'already checked'."""
    from harness.execution import plan as planning
    from harness.execution import sweep as sweeping
    from harness.training import recipe

    sweep = {
        "name": "g",
        "base": {"model": "toy:base", "dataset": toy.dataset_config(), "training": dict(TRAINING)},
        "variants": {"sft": {"objective": {"name": "sft"}}, "grpo": {"objective": _cfg()["objective"]}},
        "seeds": [0, 1],
        "evaluate_base": False,
    }
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(sweep))
    pl = planning.plan(tmp_path / "g.yaml", tmp_path / "runs")
    checked = []
    monkeypatch.setattr(
        recipe, "preflight", lambda cfg, **kw: checked.append((cfg.objective.name, kw["data"]))
    )
    sweeping.preflight(pl, pl.runs, echo=lambda line: None)
    assert sorted(checked) == [("grpo", True), ("sft", True)]  # seed 1 is skipped, never the other method


def test_without_trl_the_harness_imports_plans_and_a_grpo_run_fails_in_one_line(tmp_path):
    """`sys.modules['trl'] = None` is an interpreter in which TRL is not installed (import and find_spec
    both say so)."""
    sweep = {
        "name": "g",
        "base": {"model": "some/model", "dataset": {"path": "some/data"}, "training": {"max_steps": 2}},
        "variants": {"sft": {"objective": {"name": "sft"}}, "grpo": {"objective": {"name": "grpo"}}},
        "evaluate_base": False,
    }
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(sweep))
    script = f"""
import sys
sys.modules["trl"] = None
import harness.cli, harness.training.recipe as recipe, harness.training.grpo, harness.training.rewards
from harness.config import ConfigError, parse_run_config
assert harness.cli.main(["sweep", "plan", {str(tmp_path / "g.yaml")!r}, "--out", {str(tmp_path / "runs")!r}]) == 0
cfg = parse_run_config({{"model": "m", "dataset": {{"path": "d"}}, "objective": {{"name": "grpo"}}}})
for check in (lambda: recipe.preflight(cfg, data=False), lambda: recipe.train(cfg, None)):
    try:
        check()
    except ConfigError as e:
        print("ERROR:", e)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    errors = [line for line in out.stdout.splitlines() if line.startswith("ERROR:")]
    assert (
        errors
        == [
            "ERROR: objective 'grpo' runs TRL's GRPOTrainer, and TRL is not installed: pip install 'otr-harness[trl]'"
        ]
        * 2
    )
    assert "grpo" in out.stdout  # the plan lists the grpo run


# ----------------------------------------------------------------------------------------------- slow
def _weights(path):
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(path).named_parameters())


def _metrics(run: RunDir) -> list[dict]:
    return [json.loads(line) for line in run.metrics_file.read_text().splitlines()]


# What must be identical step by step: the loss, and what the generated completions decide.
SAME = ("loss", "reward", "kl", "entropy", "completions/mean_length", "tokens", "generated_tokens")


def test_grpo_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path, tiny_toy, caplog):
    """4 prompts, 2 per step: 2 steps per epoch, so the resumed part starts in a later epoch (the data
    order must not restart) and generation must redraw what it drew (the RNG state restored)."""
    import logging

    import torch

    from harness.execution.launch import stage_command
    from harness.training.recipe import preflight, train

    cfg, _ = tiny_toy
    run_cfg = parse_run_config(_cfg(cfg, save_strategy="steps", save_steps=1, save_total_limit=2))
    preflight(run_cfg)
    ref = RunDir(tmp_path / "ref")
    full_summary = train(run_cfg, ref)
    full = _metrics(ref)
    assert [m["step"] for m in full] == list(range(1, 7))
    for key in ("reward", "reward_std", "kl", "completions/mean_length", "rewards/toy_reward/mean"):
        assert all(key in m for m in full), key
    assert full_summary["generated_tokens"] == full[-1]["generated_tokens"] > 0
    assert full_summary["response_tokens"] == full_summary["generated_tokens"]  # num_iterations 1, no mask
    assert (
        full_summary["sampled_tokens"] == 0 and full_summary["flos"] > 0 and full_summary["reward"] == "toy"
    )
    base = _weights(toy.resolve("toy:base", cfg))
    want = _weights(ref.final_model)
    assert any(not torch.equal(base[n], want[n]) for n in want)  # GRPO moved the weights

    run = RunDir(tmp_path / "killed")
    run.write_config(run_cfg)
    proc = subprocess.Popen(
        stage_command("train", run.path, run_cfg),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (run.train_dir / "checkpoint-3" / "harness_counters.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint-3 before exit/timeout"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not run.is_done("train") and not run.final_model.exists()  # killed mid-run

    caplog.set_level(logging.INFO, logger="harness.training.recipe")
    summary = train(run_cfg, run)
    assert "resuming from " + str(run.train_dir / "checkpoint-") in caplog.text
    resumed = _metrics(run)
    assert [m["step"] for m in resumed] == list(range(1, 7))
    for a, b in zip(full, resumed, strict=True):
        assert {k: b[k] for k in SAME} == pytest.approx({k: a[k] for k in SAME}, rel=1e-5), b["step"]
    for key in ("response_tokens", "sampled_tokens", "generated_tokens", "flos", "steps"):
        assert summary[key] == full_summary[key], key
    got = _weights(run.final_model)
    for name, p in want.items():
        torch.testing.assert_close(got[name], p, rtol=1e-5, atol=1e-7, msg=name)


def test_sweep_with_sft_and_grpo_evaluates_and_reports_generated_tokens(tmp_path, tiny_toy, capsys):
    from harness.cli import main

    cfg, _ = tiny_toy
    suite = tmp_path / "toy_math.yaml"  # the toy suite's math tasks only: evaluation is most of the time
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "toy_math",
                "include_path": "@toy",
                "builtin_tasks": False,
                "tasks": [
                    {"task": "toy_math_id", "domain": "math", "split": "id", "metric": "exact_match"},
                    {"task": "toy_math_ood", "domain": "math", "split": "ood", "metric": "exact_match"},
                ],
            }
        )
    )
    sweep = {
        "name": "grpo",
        "toy": cfg.model_dump(mode="json"),
        "base": {
            "model": "toy:base",
            "dataset": toy.dataset_config(max_examples=8),
            "training": {**TRAINING, "max_steps": 2},
            "eval": {"suites": [str(suite)], "limit": 2, "batch_size": 8, "max_gen_toks": 32},
        },
        "variants": {
            "sft": {"objective": {"name": "sft"}},
            "grpo": {"objective": _cfg()["objective"]},
        },
        "seeds": [0],
        "evaluate_base": False,
    }
    sweep_file = tmp_path / "grpo.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep))
    runs_dir, report_dir = tmp_path / "runs", tmp_path / "report"
    assert (
        main(["sweep", "run", str(sweep_file), "--out", str(runs_dir), "--report-dir", str(report_dir)]) == 0
    )
    runs = {RunDir(p.parent).run_id.split("-")[0]: RunDir(p.parent) for p in runs_dir.glob("*/config.yaml")}
    assert set(runs) == {"sft", "grpo"}
    for name, run in runs.items():
        assert run.is_done("eval"), name
        assert (run.eval_dir("toy_math") / "results.json").exists()
    g = json.loads(runs["grpo"].summary_file.read_text())
    s = json.loads(runs["sft"].summary_file.read_text())
    assert g["generated_tokens"] > 0 and s["generated_tokens"] == 0
    md = (report_dir / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method | runs | wall time"))
    assert "| generated tokens |" in header
    column = header.split(" | ").index("generated tokens")
    row = next(line for line in md.splitlines() if line.startswith("| grpo |") and "×" in line)
    from harness.report.markup import num

    assert row.split(" | ")[column] == num(g["generated_tokens"])
    assert "Generated tokens are GRPO's sampled completions" in md
    assert list(report_dir.rglob("score_vs_compute.png")) and list(report_dir.rglob("compute.png"))


def test_score_vs_compute_adds_flops_only_when_a_run_generated(tmp_path, monkeypatch):
    """Without GRPO runs the figure is the wall-time one it always was; with one, a FLOs row is added."""
    import pandas as pd

    from harness.report import plots

    drawn = {}
    monkeypatch.setattr(plots, "save", lambda fig, out_dir, stem: drawn.setdefault(stem, fig) and None)
    results = pd.DataFrame(
        [{"run_id": r, "split": sp, "value": v} for r, v in (("a", 0.5), ("b", 0.6)) for sp in ("id", "ood")]
    )
    summaries = pd.DataFrame(
        {
            "run_id": ["a", "b"],
            "method": ["sft", "grpo"],
            "seed": [0, 0],
            "wall_time_s": [1.0, 2.0],
            "flos": [1e9, 5e9],
            "generated_tokens": [0, 0],
        }
    )
    cmap = {"sft": "C0", "grpo": "C1"}
    for generated, labels in (
        (0, ["training wall time (s)"] * 2),
        (100, ["training wall time (s)"] * 2 + ["estimated FLOs (training + generation)"] * 2),
    ):
        drawn.clear()
        plots.plot_score_vs_compute(
            results, summaries.assign(generated_tokens=[0, generated]), tmp_path, cmap
        )
        axes = [ax for ax in drawn["score_vs_compute"].axes if ax.get_visible()]
        assert [ax.get_xlabel() for ax in axes] == labels
