"""The README's "Use the objectives in your own training code" examples, run verbatim against the real
libraries: TRL's ``SFTTrainer``, a plain transformers ``Trainer``, a plain PyTorch loop.

Each example's code block is read from README.md and executed with a tiny random Llama (built from a
config, no download) and test-sized training arguments (``SFTConfig`` / ``TrainingArguments`` are
patched to add max_steps, CPU, no logging files). Each must give, on its first micro-batch, the same loss
as ``harness.objectives.compute`` on the untouched model's logits for the same batch and seed (for the
Trainers: the micro-batch's sum divided by the response tokens of the whole optimizer step), cost
exactly one forward per micro-batch (decoder calls counted) and never build ``[B, T, V]`` logits (the LM
head's output is empty on the fused path). TRL must keep its data handling: prompts masked by TRL's own
completion-only loss. And the harness imports without TRL.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import subprocess
import sys

import pytest
import torch
import transformers as T

from harness import objectives as O
from harness.paths import repo_root
from harness.training import dropin, fused
from harness.training.dropin import FusedObjectiveMixin, micro_batch_seed

try:
    import trl
except ImportError:  # never a silent skip: the dev extra installs TRL and CI must run these tests
    trl = None

V = 97
SECTION = "## Use the objectives in your own training code"
OTR = {"k": 256, "tau": 1.2, "beta": -0.1}  # the README's parameters
# Test-sized settings added to the README's `SFTConfig(output_dir=...)` / `TrainingArguments(...)`.
SMALL_ARGS = dict(
    max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-2,
    logging_steps=1, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, seed=3,
    dataloader_num_workers=0, bf16=False,
)  # fmt: skip


def _readme_blocks() -> list[str]:
    """The python code blocks of the README's drop-in section, in order (TRL, Trainer, PyTorch loop)."""
    text = (repo_root() / "README.md").read_text()
    assert SECTION in text, f"README.md lacks the section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


BLOCKS = _readme_blocks()


def test_readme_examples_are_short():
    assert len(BLOCKS) == 3
    assert all(len(b.strip().splitlines()) <= 15 for b in BLOCKS), [len(b.splitlines()) for b in BLOCKS]


def _model(seed: int = 0) -> torch.nn.Module:
    """A tiny fp32 Llama with an untied head, weights redrawn so the logits are far from uniform."""
    cfg = T.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )  # fmt: skip
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def _tokenizer() -> T.PreTrainedTokenizerFast:
    """A word-level tokenizer over 'w3'..'w96' (ids 3..96), pad 0, eos 1, unk 2: no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, V)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def _words(g: torch.Generator, n: int) -> str:
    return " ".join(f"w{int(i)}" for i in torch.randint(3, V, (n,), generator=g))


class Recorder:
    """Counts decoder forwards and LM-head output widths (from the start of ``Trainer.train``, so the
    fused path's one probe forward at set-up is not counted), and holds the recorded loss calls."""

    def __init__(self, model: torch.nn.Module, monkeypatch=None):
        self.forwards = 0
        self.head_widths: list[int] = []
        self.calls: list[dict] = []
        model.model.register_forward_pre_hook(lambda *_: setattr(self, "forwards", self.forwards + 1))
        model.lm_head.register_forward_hook(lambda m, i, out: self.head_widths.append(out.shape[-1]))
        if monkeypatch is not None:
            train = T.Trainer.train

            def counted_train(trainer, *args, **kwargs):
                self.forwards, self.head_widths = 0, []
                return train(trainer, *args, **kwargs)

            monkeypatch.setattr(T.Trainer, "train", counted_train)


def _record_compute_loss(monkeypatch, rec: Recorder) -> None:
    original = FusedObjectiveMixin.compute_loss

    def recording(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = {k: v.clone() for k, v in inputs.items() if torch.is_tensor(v)}
        result = original(self, model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result  # evaluation asks for (loss, outputs)
        rec.calls.append(
            {"batch": batch, "loss": float(loss.detach()), "n": num_items_in_batch, "self": self,
             "training": model.training}
        )  # fmt: skip
        return result

    monkeypatch.setattr(FusedObjectiveMixin, "compute_loss", recording)


def _reference(model, batch, name, seed, params) -> O.ObjectiveOutput:
    """objectives.compute on the model's full logits (no fused path): the drop-ins' oracle."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits
    gen = torch.Generator().manual_seed(seed)
    return O.compute(name, logits, fused.shift_labels(batch["labels"]), generator=gen, **params)


def _check_trainer_run(rec: Recorder, initial, name: str, params: dict) -> None:
    """2 steps x GA 2: 4 micro-batches, one forward each, no logits; step 1's losses equal the oracle's."""
    assert len(rec.calls) == 4
    assert rec.forwards == 4, f"{rec.forwards} decoder forwards for 4 micro-batches"
    assert rec.head_widths == [0] * 4, rec.head_widths  # the head never returned [B, T, V] logits
    first, second = rec.calls[0], rec.calls[1]  # the two micro-batches of optimizer step 0
    tokens = [int((fused.shift_labels(c["batch"]["labels"]) != -100).sum()) for c in (first, second)]
    assert int(first["n"]) == sum(tokens) > 0  # normalised by the whole step's response tokens
    seed = first["self"].args.seed
    for micro, call in enumerate((first, second)):
        ref = _reference(initial, call["batch"], name, micro_batch_seed(seed, 0, micro, 0), params)
        if micro == 0:  # the second micro-batch runs before the update too, on the same weights
            assert ref.num_tokens == tokens[0]
        assert call["loss"] == pytest.approx(float(ref.loss) / sum(tokens), rel=1e-5, abs=1e-7)


# ------------------------------------------------------------------------------------------------------
# (a) TRL's SFTTrainer
# ------------------------------------------------------------------------------------------------------
def _require_trl():
    if trl is None:
        pytest.fail("TRL is not installed: pip install -e '.[dev]' (or '.[trl]')")
    return trl


def _trl_dataset():
    import datasets

    g = torch.Generator().manual_seed(5)
    rows = [{"prompt": _words(g, 4 + i % 3), "completion": " " + _words(g, 3 + i % 4)} for i in range(8)]
    return datasets.Dataset.from_list(rows)


def _patched_sft_config(monkeypatch, **extra):
    monkeypatch.setattr(trl, "SFTConfig", functools.partial(trl.SFTConfig, **SMALL_ARGS, **extra))


@pytest.mark.parametrize("extra", [{}, {"packing": True, "max_length": 24}], ids=["padded", "packed"])
def test_trl_sft_trainer_readme_example(tmp_path, monkeypatch, extra):
    """The README's TRL block: OTR K=256 in SFTTrainer, TRL's data handling kept, one forward per batch."""
    _require_trl()
    monkeypatch.chdir(tmp_path)
    _patched_sft_config(monkeypatch, **extra)
    model, tokenizer, dataset = _model(), _tokenizer(), _trl_dataset()
    initial = copy.deepcopy(model)
    rec = Recorder(model, monkeypatch)
    _record_compute_loss(monkeypatch, rec)
    ns = {"model": model, "tokenizer": tokenizer, "dataset": dataset}
    exec(BLOCKS[0], ns)  # noqa: S102 - the README's own example
    trainer = ns["trainer"]
    assert isinstance(trainer, trl.SFTTrainer) and isinstance(trainer, FusedObjectiveMixin)
    assert trainer.objective_name == "otr" and trainer.objective_params == OTR
    _check_trainer_run(rec, initial, "otr", OTR)
    batch = rec.calls[0]["batch"]
    # TRL's data handling: its completion-only loss masked every prompt token (4+ per example).
    assert (batch["labels"] == -100).sum() >= 2 * 4
    if extra.get("packing"):  # TRL packed the examples, padding-free: position_ids restart per example
        assert batch["input_ids"].shape[0] == 1 and (batch["position_ids"][0, 1:] == 0).sum() >= 1
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logged) == 2 and all("draw_hit_rate" in r and "token_acc" in r for r in logged)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), initial.parameters(), strict=True))


@pytest.mark.parametrize("name", ["otr_exact", "dft"])
def test_trl_sft_trainer_other_objectives(tmp_path, monkeypatch, name):
    """The same mixin trains otr_exact and DFT through SFTTrainer with the oracle's losses."""
    _require_trl()
    monkeypatch.chdir(tmp_path)
    params = {"tau": 1.5, "beta": -0.2} if name == "otr_exact" else {}
    model = _model()
    initial = copy.deepcopy(model)
    rec = Recorder(model, monkeypatch)
    _record_compute_loss(monkeypatch, rec)

    class Trainer(FusedObjectiveMixin, trl.SFTTrainer):
        pass

    trainer = Trainer(
        model=model, args=trl.SFTConfig(output_dir="out", **SMALL_ARGS), train_dataset=_trl_dataset(),
        processing_class=_tokenizer(), objective=name, objective_params=params,
    )  # fmt: skip
    trainer.train()
    _check_trainer_run(rec, initial, name, params)


def test_trl_own_custom_loss_costs_a_second_forward(tmp_path, monkeypatch):
    """Why the mixin: TRL's documented way (compute_loss_func) runs two forwards per micro-batch and
    builds the full logits. The counter used above sees that, so its 'one forward' is not vacuous."""
    _require_trl()
    monkeypatch.chdir(tmp_path)
    model = _model()
    rec = Recorder(model, monkeypatch)

    def loss_func(outputs, labels, num_items_in_batch=None):
        return O.compute("sft", outputs.logits, fused.shift_labels(labels)).loss / num_items_in_batch

    with pytest.warns(FutureWarning):
        trainer = trl.SFTTrainer(
            model=model, args=trl.SFTConfig(output_dir="out", **SMALL_ARGS), train_dataset=_trl_dataset(),
            processing_class=_tokenizer(), compute_loss_func=loss_func,
        )  # fmt: skip
    trainer.train()
    assert rec.forwards == 8 and V in rec.head_widths


# ------------------------------------------------------------------------------------------------------
# (b) a plain transformers Trainer
# ------------------------------------------------------------------------------------------------------
def test_plain_trainer_readme_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # transformers' lazy module replaces itself in sys.modules: patch the one `from transformers import` reads
    transformers = sys.modules["transformers"]
    monkeypatch.setattr(
        transformers, "TrainingArguments", functools.partial(T.TrainingArguments, **SMALL_ARGS)
    )
    tokenizer = _tokenizer()
    g = torch.Generator().manual_seed(6)
    dataset = []
    for i in range(8):  # prompt tokens carry -100
        prompt, response = (
            tokenizer(_words(g, 3 + i % 3))["input_ids"],
            tokenizer(_words(g, 2 + i % 4))["input_ids"],
        )
        dataset.append({"input_ids": prompt + response, "labels": [-100] * len(prompt) + response})
    model = _model()
    initial = copy.deepcopy(model)
    rec = Recorder(model, monkeypatch)
    _record_compute_loss(monkeypatch, rec)
    ns = {"model": model, "dataset": dataset, "collator": T.DataCollatorForSeq2Seq(tokenizer)}
    exec(BLOCKS[1], ns)  # noqa: S102 - the README's own example
    assert isinstance(ns["trainer"], T.Trainer) and ns["trainer"].objective_name == "otr"
    _check_trainer_run(rec, initial, "otr", OTR)
    assert (rec.calls[0]["batch"]["labels"] == -100).any(dim=1).all()  # padding and prompts masked


# ------------------------------------------------------------------------------------------------------
# (c) a plain PyTorch loop
# ------------------------------------------------------------------------------------------------------
def test_plain_loop_readme_example(monkeypatch):
    g = torch.Generator().manual_seed(7)
    loader = []
    for _ in range(2):
        ids = torch.randint(3, V, (3, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[2, -3:] = 0  # right padding
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :4] = -100  # prompts
        loader.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    model = _model()
    initial = copy.deepcopy(model)
    rec = Recorder(model)
    outs = []
    original = fused.fused_loss
    monkeypatch.setattr(fused, "fused_loss", lambda *a, **k: outs.append(original(*a, **k)) or outs[-1])
    ns = {"model": model, "loader": loader}
    exec(BLOCKS[2], ns)  # noqa: S102 - the README's own example
    # One forward per batch, plus the probe that enable_fused_objective runs once on first use (two
    # tokens, no grad: the only time the head returns real logits).
    assert len(outs) == 2 and rec.forwards == 1 + 2 and rec.head_widths == [V, 0, 0]
    # The first batch ran on the initial weights with a fresh generator seeded 0.
    ref = _reference(initial, loader[0], "otr", 0, OTR)
    assert outs[0].num_tokens == ref.num_tokens == 6 + 6 + 3  # targets 4..9; the padded row 4..6
    assert float(outs[0].loss) == pytest.approx(float(ref.loss), rel=1e-5)
    assert outs[0].metrics == pytest.approx(ref.metrics, rel=1e-4, abs=1e-6)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), initial.parameters(), strict=True))


# ------------------------------------------------------------------------------------------------------
# The mixin's contract
# ------------------------------------------------------------------------------------------------------
def test_mixin_rejects_bad_objective_params_before_training():
    with pytest.raises(ValueError, match="objective 'otr': k must be >= 1"):

        class Trainer(FusedObjectiveMixin, T.Trainer):
            pass

        Trainer(model=_model(), objective="otr", objective_params={"k": 0})


def test_mixin_refuses_an_unfusable_head_in_one_line(tmp_path):
    cfg = T.CohereConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, logit_scale=0.25)  # fmt: skip

    class Trainer(FusedObjectiveMixin, T.Trainer):
        pass

    args = T.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(fused.FusedHeadError) as info:
        Trainer(model=T.AutoModelForCausalLM.from_config(cfg), args=args, objective="sft")
    assert "\n" not in str(info.value) and "cohere" in str(info.value) and "logit_scale" in str(info.value)


def test_mixin_evaluation_does_not_shift_training_draws(tmp_path, monkeypatch):
    """An eval_dataset evaluated every step (objective loss, no grad) leaves OTR's training draws alone."""
    tokenizer = _tokenizer()
    g = torch.Generator().manual_seed(8)
    data = [{"input_ids": tokenizer(_words(g, 8))["input_ids"]} for _ in range(8)]
    data = [{**d, "labels": [-100] * 3 + d["input_ids"][3:]} for d in data]

    class Trainer(FusedObjectiveMixin, T.Trainer):
        pass

    runs = {}
    for evaluate in (False, True):
        model = _model()
        rec = Recorder(model)
        with monkeypatch.context() as m:
            _record_compute_loss(m, rec)
            extra = {"eval_strategy": "steps", "eval_steps": 1} if evaluate else {}
            args = T.TrainingArguments(output_dir=str(tmp_path / str(evaluate)), **SMALL_ARGS, **extra)
            trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:2],
                              data_collator=T.DataCollatorForSeq2Seq(tokenizer), objective="otr",
                              objective_params=OTR)  # fmt: skip
            trainer.train()
        runs[evaluate] = rec.calls, trainer.state.log_history
    evals = [r for r in runs[True][1] if "eval_loss" in r]
    assert len(evals) == 2 and all(math.isfinite(r["eval_loss"]) for r in evals)
    assert sum(not c["training"] for c in runs[True][0]) == 2  # the eval batches went through it too
    train_losses = {e: [c["loss"] for c in calls if c["training"]] for e, (calls, _) in runs.items()}
    assert len(train_losses[False]) == 4 and train_losses[True] == train_losses[False]


def test_micro_batch_generators_count_micro_batches():
    gens = dropin.MicroBatchGenerators(11)
    draws = [gens.next(step, 0, torch.device("cpu")).initial_seed() for step in (0, 0, 1, 1, 1, 2)]
    assert draws == [
        micro_batch_seed(11, s, m, 0) for s, m in ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0))
    ]
    assert len(set(draws)) == len(draws)


def test_harness_imports_without_trl():
    """TRL is an optional extra: the harness's training modules and the drop-ins import without it."""
    code = (
        "import sys; sys.modules['trl'] = None\n"  # `import trl` now raises ImportError
        "import harness.training.recipe, harness.execution.worker\n"
        "from harness.training import FusedObjectiveMixin, fused_loss\n"
        "assert 'trl' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root())
    assert out.returncode == 0, out.stderr[-2000:]


# ------------------------------------------------------------------------------------------------------
# The harness's own runs: fused by default, refusals before training in one line
# ------------------------------------------------------------------------------------------------------
def test_fused_is_the_default_and_keeps_run_ids():
    from harness.config import parse_run_config
    from harness.training.trainer import ObjectiveTrainer

    base = {"model": "m", "dataset": {"path": "org/data"}, "objective": {"name": "sft"}}
    cfg = parse_run_config(base)
    assert cfg.training_path == "fused"
    assert ObjectiveTrainer.__init__.__kwdefaults__["training_path"] == "fused"
    from harness.config.hashing import config_hash

    # A run's id is what it was before the field existed while it is at its default; logits is another run.
    dump = cfg.model_dump(mode="json")
    assert dump.pop("training_path") == "fused"
    assert cfg.config_hash() == config_hash(dump)
    assert cfg.config_hash() != parse_run_config({**base, "training_path": "logits"}).config_hash()


def test_lora_on_lm_head_needs_the_logits_path():
    from harness.config import ConfigError, parse_run_config

    base = {"model": "m", "dataset": {"path": "org/data"}, "objective": {"name": "sft"}}
    for lora in ({"target_modules": ["q_proj", "lm_head"]}, {"modules_to_save": ["lm_head"]}):
        with pytest.raises(
            ConfigError, match="field .training_path.: LoRA or modules_to_save on lm_head"
        ) as info:
            parse_run_config({**base, "lora": lora})
        assert "\n" not in str(info.value)
        parse_run_config({**base, "lora": lora, "training_path": "logits"})  # the way out
    parse_run_config({**base, "lora": {"target_modules": "all-linear"}})  # all-linear skips the head


def test_objective_trainer_refuses_an_unfusable_head_as_a_config_error(tmp_path):
    from harness.config import ConfigError
    from harness.training.trainer import ObjectiveTrainer

    cfg = T.GraniteConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, logits_scaling=4.0)  # fmt: skip
    args = T.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ConfigError) as info:
        ObjectiveTrainer(model=T.AutoModelForCausalLM.from_config(cfg), args=args, objective_name="sft",
                         objective_params={}, run_seed=0)  # fmt: skip
    msg = str(info.value)
    assert msg.startswith("training_path: granite") and "logits_scaling=4.0" in msg and "\n" not in msg, msg
    assert "use training_path: logits" in msg
