"""The training recipe on the tiny toy world: masking, token normalisation, the logged loss, determinism."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness import objectives, toy
from harness.config import parse_run_config
from harness.runs.layout import CHECKPOINT_PREFIX, RunDir
from harness.toy import resolve
from harness.training.checkpoints import (
    checkpoint_path,
    last_complete_checkpoint,
    read_counters,
    remove_torn_checkpoints,
    truncate_metrics,
    write_counters,
)
from harness.training.data import IGNORE_INDEX, Collator, tokenize_example
from harness.training.recipe import train


def _cfg(toy_cfg, objective: dict, **training) -> dict:
    return {
        "model": "toy:base",
        "toy": toy_cfg.model_dump(mode="json"),
        "dataset": toy.dataset_config(max_examples=32),
        "objective": objective,
        "training": {
            "learning_rate": 1e-2,
            "per_device_train_batch_size": 8,
            "max_steps": 1,
            "logging_steps": 1,
            "optim": "sgd",  # plain SGD: the update is proportional to the gradient (Adam's is not)
            "warmup_steps": 0,
            "lr_scheduler_type": "constant",
            "max_grad_norm": 1e9,
            "weight_decay": 0.0,
            **training,
        },
    }


def test_prompt_tokens_carry_no_label_and_shift_is_aligned(tiny_toy):
    cfg, world = tiny_toy
    tok = AutoTokenizer.from_pretrained(world.base_model)
    ex = tokenize_example("Question: 1 + 2?\nAnswer:", " 1 + 2 = 3\n#### 3", tok, max_length=256)
    n_prompt = len(tok("Question: 1 + 2?\nAnswer:")["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(ex["input_ids"][n_prompt:-1]) == " 1 + 2 = 3\n#### 3"
    batch = Collator(tok.pad_token_id)(
        [ex, {**ex, "input_ids": ex["input_ids"][:5], "labels": ex["labels"][:5]}]
    )
    # shift_labels[:, t] is the token that logits[:, t] must predict.
    assert torch.equal(batch["shift_labels"][0, :-1], batch["labels"][0, 1:])
    assert (batch["shift_labels"][1, 4:] == IGNORE_INDEX).all() and (
        batch["attention_mask"][1, 5:] == 0
    ).all()
    truncated = tokenize_example(
        "Question: 1 + 2?\nAnswer:", " 1 + 2 = 3\n#### 3", tok, max_length=n_prompt + 2
    )
    assert len(truncated["input_ids"]) == n_prompt + 2 and truncated["truncated"]


def _train(tmp_path, name, cfg_dict):
    run = RunDir(tmp_path / name)
    summary = train(parse_run_config(cfg_dict), run)
    metrics = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(run.final_model)
    return summary, metrics, model


@pytest.mark.slow
def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_toy):
    """1 × 8 and 4 × 2 see the same 8 examples: with global token normalisation the update is identical."""
    cfg, _ = tiny_toy
    objective = {"name": "sft"}
    _, m_big, big = _train(tmp_path, "big", _cfg(cfg, objective))
    _, m_acc, acc = _train(
        tmp_path, "acc", _cfg(cfg, objective, per_device_train_batch_size=2, gradient_accumulation_steps=4)
    )
    assert m_big[0]["tokens"] == m_acc[0]["tokens"]
    assert m_big[0]["loss"] == pytest.approx(m_acc[0]["loss"], rel=1e-5)
    for (name, p), q in zip(big.named_parameters(), acc.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    # And the update is not trivially zero: the model moved away from the base.
    base = AutoModelForCausalLM.from_pretrained(resolve("toy:base", cfg))
    assert any(not torch.allclose(p, q) for p, q in zip(big.parameters(), base.parameters(), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("normalization", ["tokens", "sequences"])
def test_logged_step_one_loss_equals_objective_by_hand(tmp_path, tiny_toy, normalization):
    """The first logged loss is the objective on the first batch, divided by its response tokens
    (tokens), or the mean over the batch's sequences of each sequence's mean (sequences)."""
    cfg, _ = tiny_toy
    d = {**_cfg(cfg, {"name": "otr_exact", "tau": 1.5, "beta": -0.2}), "loss_normalization": normalization}
    run_cfg = parse_run_config(d)
    _, metrics, _ = _train(tmp_path, "exact", run_cfg.model_dump(mode="json"))

    from transformers import set_seed

    from harness.training.data import build_dataset

    # Rebuild the first batch the way the Trainer's seeded sampler drew it.
    set_seed(run_cfg.seed)
    tok = AutoTokenizer.from_pretrained(resolve("toy:base", cfg))
    ds = build_dataset(run_cfg.dataset, resolve(run_cfg.dataset.path, cfg), tok)
    g = torch.Generator()
    g.manual_seed(run_cfg.seed)
    order = torch.randperm(len(ds), generator=g).tolist()[:8]
    batch = Collator(tok.pad_token_id)([ds[i] for i in order])
    model = AutoModelForCausalLM.from_pretrained(resolve("toy:base", cfg))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    out = objectives.compute("otr_exact", logits, batch["shift_labels"], tau=1.5, beta=-0.2)
    assert metrics[0]["tokens"] == out.num_tokens
    if normalization == "tokens":
        expected = out.loss.item() / out.num_tokens
    else:
        rows = [
            objectives.compute("otr_exact", logits[i], batch["shift_labels"][i], tau=1.5, beta=-0.2)
            for i in range(len(order))
        ]
        assert all(r.num_tokens > 0 for r in rows)
        expected = sum(r.loss.item() / r.num_tokens for r in rows) / len(rows)
    assert metrics[0]["loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_same_seed_same_otr_losses(tmp_path, tiny_toy):
    cfg, _ = tiny_toy
    objective = {"name": "otr", "k": 4, "tau": 1.2, "beta": -0.1}
    d = _cfg(cfg, objective, max_steps=3)
    _, a, _ = _train(tmp_path, "a", d)
    _, b, _ = _train(tmp_path, "b", d)
    _, c, _ = _train(tmp_path, "c", {**d, "seed": 1})
    assert [m["loss"] for m in a] == [m["loss"] for m in b]
    assert [m["loss"] for m in a] != [m["loss"] for m in c]
    # a, b, c trained on the default (fused) path; the logits path draws the same: same losses.
    assert parse_run_config(d).training_path == "fused"
    _, lg, _ = _train(tmp_path, "logits", {**d, "training_path": "logits"})
    for key in ("loss", "draw_hit_rate", "nll"):
        assert [m[key] for m in lg] == pytest.approx([m[key] for m in a], rel=1e-5), key


# ------------------------------------------------------------------------------------------------------
# Checkpoints: keep-last-N, and a resumed run continues exactly like an uninterrupted one
# ------------------------------------------------------------------------------------------------------
def test_checkpoint_prefix_is_the_trainers():
    # The Trainer names its checkpoints itself; the layout (and the resume logic) must use its prefix.
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    assert f"{PREFIX_CHECKPOINT_DIR}-" == CHECKPOINT_PREFIX


def test_resume_point_is_the_last_complete_checkpoint_and_later_ones_go(tmp_path):
    train_dir = tmp_path / "train"
    assert last_complete_checkpoint(train_dir) is None  # no train dir yet
    for step in (2, 4, 10, 12):
        checkpoint_path(train_dir, step).mkdir(parents=True)
    for step in (2, 4, 10):  # step 10 sorts after 4 numerically, not as text
        write_counters(checkpoint_path(train_dir, step), tokens_seen=step, sampled_tokens=2 * step)
    (train_dir / f"{CHECKPOINT_PREFIX}x").mkdir()  # not a step: ignored, never removed
    keep = last_complete_checkpoint(train_dir)
    assert keep == checkpoint_path(train_dir, 10) and read_counters(keep) == (10, 20)
    remove_torn_checkpoints(train_dir, keep)  # 12 has no counters: torn
    assert sorted(p.name for p in train_dir.iterdir()) == sorted(
        f"{CHECKPOINT_PREFIX}{s}" for s in ("2", "4", "10", "x")
    )
    remove_torn_checkpoints(train_dir, checkpoint_path(train_dir, 2))  # resume earlier: later ones redone
    assert last_complete_checkpoint(train_dir) == checkpoint_path(train_dir, 2)
    run = RunDir(tmp_path)
    run.metrics_file.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4')
    truncate_metrics(run.metrics_file, 2)  # a torn last line is dropped too
    assert run.metrics_file.read_text() == '{"step": 1}\n{"step": 2}\n'


@pytest.mark.slow
def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, tiny_toy, caplog):
    cfg, _ = tiny_toy
    # OTR (sampled: per-step draws must be reproduced) with AdamW, warmup and cosine (state must be restored).
    d = _cfg(
        cfg,
        {"name": "otr", "k": 4, "tau": 1.2, "beta": -0.1},
        max_steps=6,
        per_device_train_batch_size=8,
        optim="adamw_torch",
        learning_rate=1e-3,
        warmup_steps=2,
        lr_scheduler_type="cosine",
        save_strategy="steps",
        save_steps=2,
        save_total_limit=2,
    )
    assert parse_run_config(d).training_path == "fused"  # the default path is the one resumed
    run = RunDir(tmp_path / "run")
    full_summary = train(parse_run_config(d), run)
    full = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [m["step"] for m in full] == [1, 2, 3, 4, 5, 6]
    # save_total_limit=2: only the last two checkpoints are kept.
    assert sorted(p.name for p in run.train_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]

    # Simulate a run killed after checkpoint-4 was written: later checkpoints, model and summary gone,
    # and log lines of steps 5-6 left behind (they must be dropped and redone). Mark rows 1-4 to see
    # that they are kept, i.e. that the run resumed instead of starting over.
    shutil.rmtree(run.train_dir / "checkpoint-6")
    shutil.rmtree(run.final_model)
    # ... and a checkpoint-8 torn by the kill mid-save (no counters file): skipped and removed on resume.
    torn = run.train_dir / "checkpoint-8"
    shutil.copytree(run.train_dir / "checkpoint-4", torn)
    (torn / "harness_counters.json").unlink()
    run.summary_file.unlink()
    run.metrics_file.write_text("".join(json.dumps({**m, "kept": m["step"] <= 4}) + "\n" for m in full))

    caplog.set_level(logging.INFO, logger="harness.training.recipe")
    summary = train(parse_run_config(d), run)
    assert "resuming from " + str(run.train_dir / "checkpoint-4") in caplog.text
    assert "removing incomplete checkpoint" in caplog.text and not torn.exists()
    resumed = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]
    assert [m.get("kept") for m in resumed] == [True] * 4 + [None] * 2
    assert summary["steps"] == 6 and run.final_model.is_dir()
    for a, b in zip(full[4:], resumed[4:], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), b["step"]
        assert b["learning_rate"] == pytest.approx(a["learning_rate"], rel=1e-6)
        # Compute accounting is cumulative over the whole run, not over the resumed part only.
        assert (b["tokens"], b["sampled_tokens"]) == (a["tokens"], a["sampled_tokens"]), b["step"]
    for key in ("response_tokens", "sampled_tokens"):
        assert summary[key] == full_summary[key] > 0, key


# ------------------------------------------------------------------------------------------------------
# loss_normalization: sequences
# ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sequence_normalisation_is_accumulation_invariant_and_differs_from_tokens(tmp_path, tiny_toy):
    cfg, _ = tiny_toy
    seq = {**_cfg(cfg, {"name": "sft"}), "loss_normalization": "sequences"}
    _, m_big, big = _train(tmp_path, "big", seq)
    acc_cfg = {
        **_cfg(cfg, {"name": "sft"}, per_device_train_batch_size=2, gradient_accumulation_steps=4),
        "loss_normalization": "sequences",
    }
    _, m_acc, acc = _train(tmp_path, "acc", acc_cfg)
    assert m_big[0]["tokens"] == m_acc[0]["tokens"]
    assert m_big[0]["loss"] == pytest.approx(m_acc[0]["loss"], rel=1e-5)
    for (name, p), q in zip(big.named_parameters(), acc.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    # The same batch under token normalisation: sequences of different lengths weigh differently.
    _, m_tok, tok_model = _train(tmp_path, "tok", _cfg(cfg, {"name": "sft"}))
    assert m_tok[0]["tokens"] == m_big[0]["tokens"]
    assert m_tok[0]["loss"] != pytest.approx(m_big[0]["loss"], rel=1e-4)
    assert any(
        not torch.allclose(p, q) for p, q in zip(big.parameters(), tok_model.parameters(), strict=True)
    )


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_gives_the_uninterrupted_losses(tmp_path, tiny_toy, caplog):
    """A real kill: the training stage's process group gets SIGKILL right after a checkpoint completed."""
    import os
    import signal
    import subprocess
    import time

    from harness.execution.launch import stage_command

    cfg, _ = tiny_toy
    d = _cfg(
        cfg,
        {"name": "otr", "k": 4, "tau": 1.2, "beta": -0.1},
        max_steps=8,
        per_device_train_batch_size=4,
        optim="adamw_torch",
        learning_rate=1e-3,
        warmup_steps=3,
        lr_scheduler_type="cosine",
        save_strategy="steps",
        save_steps=2,
        save_total_limit=2,
    )
    run_cfg = parse_run_config(d)
    ref = RunDir(tmp_path / "ref")
    train(run_cfg, ref)
    full = [json.loads(line) for line in ref.metrics_file.read_text().splitlines()]

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
        while not (run.train_dir / "checkpoint-4" / "harness_counters.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint-4 before exit/timeout"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not run.is_done("train") and not run.final_model.exists()  # killed mid-run

    caplog.set_level(logging.INFO, logger="harness.training.recipe")
    train(run_cfg, run)
    assert "resuming from " + str(run.train_dir / "checkpoint-") in caplog.text
    resumed = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [m["step"] for m in resumed] == list(range(1, 9))
    for a, b in zip(full, resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), b["step"]
        assert (b["tokens"], b["sampled_tokens"]) == (a["tokens"], a["sampled_tokens"]), b["step"]
    want = AutoModelForCausalLM.from_pretrained(ref.final_model)
    got = AutoModelForCausalLM.from_pretrained(run.final_model)
    for (name, p), q in zip(want.named_parameters(), got.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
