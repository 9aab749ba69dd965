"""The training recipe on the tiny toy world: masking, token normalisation, the logged loss, determinism."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness import objectives
from harness.config import parse_run_config
from harness.data import IGNORE_INDEX, Collator, tokenize_example
from harness.rundir import RunDir
from harness.toy import resolve
from harness.train import train


def _cfg(toy_cfg, objective: dict, **training) -> dict:
    return {
        "model": "toy:base",
        "toy": toy_cfg.model_dump(mode="json"),
        "dataset": {
            "path": "toy:math/train",
            "prompt_field": "question",
            "response_field": "answer",
            "prompt_format": "Question: {prompt}\nAnswer:",
            "max_examples": 32,
        },
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
def test_logged_step_one_loss_equals_objective_by_hand(tmp_path, tiny_toy):
    """The first logged loss is the objective on the first batch, divided by its response tokens."""
    cfg, _ = tiny_toy
    run_cfg = parse_run_config(_cfg(cfg, {"name": "otr_exact", "tau": 1.5, "beta": -0.2}))
    _, metrics, _ = _train(tmp_path, "exact", run_cfg.model_dump(mode="json"))

    from transformers import set_seed

    from harness.data import build_dataset

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
    assert metrics[0]["loss"] == pytest.approx(out.loss.item() / out.num_tokens, rel=1e-4)


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
