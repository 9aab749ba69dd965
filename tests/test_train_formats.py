"""Every objective trains from both data formats (prompt/response JSONL and chat `messages` JSONL).

For each (objective, format) the toy model trains 2 steps of 4 examples (one pass over 8 examples), and:
* prompt tokens carry no label (checked on the tokenized data against an independent tokenization);
* the logged token counts are the response tokens (+ EOS) of the batch / of all examples;
* the logged step-1 loss equals the objective computed by hand on the exact first batch the Trainer drew,
  with the same sampling generator for the sampled objectives.
Plus the rest of the training stage: LoRA (merged final model), packing, gradient checkpointing, bf16,
report_to, and data validation before any model is loaded.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_data import CHAT_TEMPLATE, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness import cli, objectives
from harness.config import ConfigError, parse_run_config
from harness.runs.layout import RunDir
from harness.training.data import IGNORE_INDEX
from harness.training.recipe import build_trainer, train
from harness.training.trainer import micro_batch_seed

# Questions and answers of different lengths (so padding and per-example boundaries matter).
QA = [
    (f"What is {a} + {b}?", f"{a} + {b} = {a + b}\n" * (1 + a % 3) + f"#### {a + b}")
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
]
# Non-default parameters where an objective has any, so the hand computation must use them.
PARAMS = {
    "otr": {"k": 4, "tau": 1.3, "beta": -0.2},
    "otr_exact": {"tau": 1.5, "beta": -0.2},
    "unlikelihood": {"alpha": 0.5, "k": 3, "tau": 1.1},
    "label_smoothing": {"eps": 0.2},
    "entropy_sft": {"lambda": 0.05},
    "asft": {"alpha": 0.5},
}
FORMATS = ["prompt_response", "messages"]


def _training(**overrides) -> dict:
    return {
        "learning_rate": 1e-2,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "logging_steps": 1,
        "optim": "sgd",
        "warmup_steps": 0,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 1e9,
        "weight_decay": 0.0,
        **overrides,
    }


def _write_format(directory, kind: str) -> tuple[dict, list[str], list[str]]:
    """Write the 8 examples as `kind`; return the dataset block, the prompts and responses as rendered."""
    if kind == "messages":
        rows = [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA
        ]
        block = {"messages_field": "messages", "chat_template": CHAT_TEMPLATE}
        prompts = [f"<user>{q}\n<assistant>" for q, _ in QA]  # CHAT_TEMPLATE with the generation prompt
        responses = [a for _, a in QA]
    else:
        rows = [{"problem": q, "solution": a} for q, a in QA]
        block = {"prompt_field": "problem", "response_field": "solution", "prompt_format": "Q: {prompt}\nA:"}
        prompts = [f"Q: {q}\nA:" for q, _ in QA]
        responses = [" " + a for _, a in QA]  # the default response_format is " {response}"
    path = write_jsonl(directory / f"{kind}.jsonl", rows)
    return {"path": path, **block}, prompts, responses


def _run_cfg(toy_cfg, dataset: dict, objective: dict, **kwargs) -> dict:
    training = _training(**kwargs.pop("training", {}))
    return {
        "model": "toy:base",
        "toy": toy_cfg.model_dump(mode="json"),
        "dataset": dataset,
        "objective": objective,
        "training": training,
        **kwargs,
    }


@pytest.fixture(scope="module")
def formats(tiny_toy, tmp_path_factory):
    """Per format: the dataset block, expected token counts, and the Trainer's first batch + base logits."""
    cfg, world = tiny_toy
    tok = AutoTokenizer.from_pretrained(world.base_model)
    directory = tmp_path_factory.mktemp("formats")
    out = {}
    for kind in FORMATS:
        dataset, prompts, responses = _write_format(directory, kind)
        trainer, _ = build_trainer(
            parse_run_config(_run_cfg(cfg, dataset, {"name": "sft"})), RunDir(directory / f"probe-{kind}")
        )
        # Prompt tokens carry no label: compare with an independent tokenization of prompt and response.
        chat = kind == "messages"  # a chat-rendered prompt brings its own special tokens
        for ex, prompt, response in zip(trainer.train_dataset, prompts, responses, strict=True):
            p_ids = tok(prompt, add_special_tokens=not chat)["input_ids"]
            r_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert ex["input_ids"] == p_ids + r_ids, kind
            assert ex["labels"] == [IGNORE_INDEX] * len(p_ids) + r_ids, kind
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
            logits = trainer.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        out[kind] = {
            "dataset": dataset,
            "all_tokens": sum(len(tok(r, add_special_tokens=False)["input_ids"]) + 1 for r in responses),
            "shift_labels": batch["shift_labels"],
            "logits": logits,
        }
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize("name", objectives.available())
def test_every_objective_trains_from_both_formats(tmp_path, tiny_toy, formats, name, kind):
    cfg, _ = tiny_toy
    f = formats[kind]
    params = PARAMS.get(name, {})
    summary = train(
        parse_run_config(_run_cfg(cfg, f["dataset"], {"name": name, **params})), RunDir(tmp_path / "run")
    )
    metrics = [json.loads(line) for line in (tmp_path / "run/train/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert summary["num_examples"] == 8 and summary["num_truncated"] == 0
    if kind == "messages":  # the chat template travels with the fine-tuned model
        assert AutoTokenizer.from_pretrained(tmp_path / "run/train/final").chat_template == CHAT_TEMPLATE

    # Token counts: the first batch's response tokens, then all 8 examples' (response + EOS each).
    first_tokens = int((f["shift_labels"] != IGNORE_INDEX).sum())
    assert metrics[0]["tokens"] == first_tokens
    assert metrics[1]["tokens"] == summary["response_tokens"] == f["all_tokens"]
    k = objectives.samples_per_token(name, params)
    assert summary["sampled_tokens"] == k * f["all_tokens"]

    # Step 1: the objective by hand on the same batch, same generator, divided by its response tokens.
    gen = torch.Generator().manual_seed(micro_batch_seed(0, 0, 0, 0))
    # asft's reference is the base model, which at step 1 is the policy: its logits are the base's too.
    ref = {"ref_logits": f["logits"]} if objectives.needs_reference(name) else {}
    out = objectives.compute(name, f["logits"], f["shift_labels"], generator=gen, **ref, **params)
    assert out.num_tokens == first_tokens
    assert metrics[0]["loss"] == pytest.approx(out.loss.item() / out.num_tokens, rel=1e-4, abs=1e-6)
    for key, value in out.metrics.items():  # the objective's diagnostics are logged as computed
        assert metrics[0][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


# ------------------------------------------------------------------------------------------------------
# LoRA: adapters train, the final model is the base with the adapters merged (a plain HF directory)
# ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lora_trains_adapters_and_saves_a_merged_model(tmp_path, tiny_toy, formats):
    from peft import PeftModel

    cfg, world = tiny_toy
    d = _run_cfg(
        cfg,
        formats["prompt_response"]["dataset"],
        {"name": "sft"},
        lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        training={"optim": "adamw_torch", "learning_rate": 5e-2},
    )
    run = RunDir(tmp_path / "lora")
    summary = train(parse_run_config(d), run)
    assert 0 < summary["num_trainable_parameters"] < summary["num_parameters"] / 10
    assert (run.train_dir / "adapter" / "adapter_config.json").is_file()
    final_files = {p.name for p in run.final_model.iterdir()}
    assert "config.json" in final_files and "adapter_config.json" not in final_files

    merged = AutoModelForCausalLM.from_pretrained(run.final_model)  # no peft needed to load it
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(world.base_model)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(base, run.train_dir / "adapter").eval()(ids).logits
        got = merged(ids).logits
        untouched = AutoModelForCausalLM.from_pretrained(world.base_model)(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, untouched, atol=1e-4)  # the adapters did learn something
    # Only the adapted projections changed in the merged model.
    for (n, p), q in zip(merged.named_parameters(), AutoModelForCausalLM.from_pretrained(world.base_model).parameters(), strict=True):  # fmt: skip
        assert torch.equal(p, q) == ("q_proj" not in n and "v_proj" not in n), n


def test_lora_config_is_validated(tmp_path, tiny_toy, formats, monkeypatch):
    cfg, _ = tiny_toy
    base = _run_cfg(cfg, formats["prompt_response"]["dataset"], {"name": "sft"})
    with pytest.raises(ConfigError, match="lora.r"):
        parse_run_config({**base, "lora": {"r": 0}})
    with pytest.raises(ConfigError, match="lora.rank"):
        parse_run_config({**base, "lora": {"rank": 8}})
    # A module name the model does not have: named, with the model's linear layers, before training.
    import harness.training.recipe as train_mod

    monkeypatch.setattr(train_mod.ObjectiveTrainer, "train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ConfigError, match=r"lora.target_modules: .*q_proj"):
        train(parse_run_config({**base, "lora": {"target_modules": ["query"]}}), RunDir(tmp_path / "r"))


# ------------------------------------------------------------------------------------------------------
# Packing, gradient checkpointing, bf16: the same first update as the plain run
# ------------------------------------------------------------------------------------------------------
def _final_params(run: RunDir) -> dict[str, torch.Tensor]:
    return {n: p.float() for n, p in AutoModelForCausalLM.from_pretrained(run.final_model).named_parameters()}


def _metrics(run: RunDir) -> list[dict]:
    return [json.loads(line) for line in run.metrics_file.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    [
        {"dataset": {"packing": True}},
        {"objective": {"name": "otr", "k": 4}, "dataset": {"packing": True}},
        {"training": {"gradient_checkpointing": True}},
    ],
    ids=["packing-sft", "packing-otr", "gradient-checkpointing"],
)
def test_same_update_as_the_plain_run(tmp_path, tiny_toy, formats, variant):
    cfg, _ = tiny_toy
    dataset = formats["messages"]["dataset"]
    objective = variant.get("objective", {"name": "sft"})
    plain = RunDir(tmp_path / "plain")
    train(parse_run_config(_run_cfg(cfg, dataset, objective, training={"max_steps": 1})), plain)
    other = RunDir(tmp_path / "other")
    d = _run_cfg(
        cfg,
        {**dataset, **variant.get("dataset", {})},
        objective,
        training={"max_steps": 1, **variant.get("training", {})},
    )
    train(parse_run_config(d), other)
    a, b = _metrics(plain)[0], _metrics(other)[0]
    assert a["tokens"] == b["tokens"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    pa, pb = _final_params(plain), _final_params(other)
    for n in pa:
        torch.testing.assert_close(pb[n], pa[n], rtol=1e-4, atol=1e-6, msg=n)


def test_packing_refuses_sequence_normalisation(tiny_toy, formats):
    cfg, _ = tiny_toy
    d = _run_cfg(cfg, {**formats["messages"]["dataset"], "packing": True}, {"name": "sft"})
    with pytest.raises(ConfigError, match="packing needs loss_normalization: tokens"):
        parse_run_config({**d, "loss_normalization": "sequences"})


@pytest.mark.slow
def test_bf16_weights_and_mixed_precision_train(tmp_path, tiny_toy, formats):
    cfg, _ = tiny_toy
    dataset = formats["prompt_response"]["dataset"]
    # transformers allows bf16 autocast on CPU only with use_cpu (on a GPU, bf16: true alone).
    amp = {"training": {"bf16": True, "use_cpu": True}}
    for name, extra in [("weights", {"model_dtype": "bfloat16"}), ("amp", amp)]:
        run = RunDir(tmp_path / name)
        train(parse_run_config(_run_cfg(cfg, dataset, {"name": "otr", "k": 4}, **extra)), run)
        assert all(math.isfinite(m["loss"]) for m in _metrics(run))
        saved = json.loads((run.final_model / "config.json").read_text())
        assert saved.get("dtype", saved.get("torch_dtype")) == (
            "bfloat16" if name == "weights" else "float32"
        )


# ------------------------------------------------------------------------------------------------------
# report_to passes through: tensorboard writes its event files, offline
# ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_to_tensorboard_writes_event_files(tmp_path, tiny_toy, formats):
    pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard")
    cfg, _ = tiny_toy
    d = _run_cfg(
        cfg, formats["prompt_response"]["dataset"], {"name": "sft"}, training={"report_to": "tensorboard"}
    )
    run = RunDir(tmp_path / "tb")
    train(parse_run_config(d), run)
    events = list(run.train_dir.glob("runs/*/events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]


# ------------------------------------------------------------------------------------------------------
# Data validation: before any model is loaded, one error naming the field and the example
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"problem": "a", "solution": "b"}, {"problem": "c"}], "dataset.response_field: example 1 has no value"),
        ([{"problem": "a", "solution": "b"}] * 2 + [{"problem": "c", "solution": "  "}], "example 2 has an empty 'solution'"),
        ([{"question": "a", "solution": "b"}], "dataset.prompt_field: example 0 has no field 'problem'"),
        ([], "has no examples"),
    ],
    ids=["null-response", "empty-response", "missing-field", "empty-dataset"],
)  # fmt: skip
def test_bad_data_fails_before_the_model_is_loaded(tmp_path, tiny_toy, monkeypatch, capsys, rows, expected):
    import yaml

    import harness.training.recipe as train_mod

    cfg, _ = tiny_toy
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    d = _run_cfg(
        cfg, {"path": path, "prompt_field": "problem", "response_field": "solution"}, {"name": "sft"}
    )
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(d))
    monkeypatch.setattr(train_mod, "load_model", lambda *a: pytest.fail("the model was loaded"))
    code = cli.main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert not (tmp_path / "run" / "train" / "final").exists()
    assert not (tmp_path / "run" / "train" / "metrics.jsonl").exists()
