"""The fused training path (``harness.training.fused``) equals the logits path, or refuses in one line.

Tiny random models built locally from configs (no download), in fp64 so "equal" means float noise: for
every objective, the loss, every diagnostic and the gradient of every parameter through the model's own
(patched) forward equal ``objectives.compute`` on ``model(...).logits``. Tiles are forced small
(``chunk_size``) so several tile boundaries are crossed. Then the refusals, and ``ObjectiveTrainer``
with ``training_path="fused"`` against ``"logits"`` over two optimizer steps with gradient accumulation.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import transformers as T
from torch import nn

from harness import objectives as O
from harness.training import fused
from harness.training.data import Collator, PackingCollator

V = 97
H = 32
ALL = [n for n in O.available() if not O.needs_reference(n)]  # asft: tests/test_asft.py
from test_objectives import PARAMS  # noqa: E402  (one table of "interesting" parameters)

SOFTCAP = 1.5  # small, so tanh bends the tiny models' logits a lot: dropping it cannot go unnoticed
SMALL = dict(hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
CONFIGS = {
    "llama": lambda: T.LlamaConfig(**SMALL, num_key_value_heads=2),
    "qwen2": lambda: T.Qwen2Config(**SMALL, num_key_value_heads=2),
    "qwen3": lambda: T.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=8),
    "gemma2": lambda: T.Gemma2Config(
        **SMALL, num_key_value_heads=2, head_dim=8, final_logit_softcapping=SOFTCAP
    ),
    "mistral": lambda: T.MistralConfig(**SMALL, num_key_value_heads=2),
    "phi3": lambda: T.Phi3Config(**SMALL, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0),
    "gpt2": lambda: T.GPT2Config(
        n_embd=H, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    ),
}


def _model(kind: str, seed: int = 0, bias: bool = False, **overrides) -> nn.Module:
    """A tiny fp64 causal LM, parameters redrawn at std 0.3 so the logits are far from uniform."""
    cfg = CONFIGS[kind]()
    cfg.vocab_size = V
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(cfg).double()
    if bias:  # no Hub family has an LM-head bias in these sizes: give one its own
        model.lm_head = nn.Linear(H, V, bias=True, dtype=torch.float64)
        model.config.tie_word_embeddings = False
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.train()


def _batch(b: int = 3, t: int = 11, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded rows with a masked "prompt": HF-style labels (not shifted)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[-1, -3:] = 0  # padding
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :4] = -100  # prompt
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _logits_path(model, batch, name, seed=0, **params):
    """The reference: objectives.compute on the model's [B, T, V] logits (model forward NOT fused)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits
    out = O.compute(name, logits, fused.shift_labels(batch["labels"]), generator=_gen(seed), **params)
    out.loss.backward()
    return out, _grads(model)


def _fused_path(model, batch, name, seed=0, chunk_size=5, **params):
    out = fused.fused_loss(model, batch, name, _gen(seed), chunk_size=chunk_size, **params)
    out.loss.backward()
    return out, _grads(model)


def _assert_same(a, ga, b, gb, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(a.loss.detach(), b.loss.detach(), rtol=rtol, atol=atol)
    assert a.num_tokens == b.num_tokens > 0
    assert set(a.metrics) == set(b.metrics)
    assert a.metrics == pytest.approx(b.metrics, rel=rtol * 100, abs=atol * 100)
    assert set(ga) == set(gb) and len(ga) > 0
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=rtol, atol=atol, msg=lambda m, n=n: f"{n}: {m}")


# ------------------------------------------------------------------------------------------------------
# The engine's soft-cap (objectives.compute_from_hidden(softcap=...)) against the reference
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_engine_softcap_matches_reference(name):
    """Engine tiles (closed-form gradient through tanh) == reference autograd on c * tanh(h W^T + b / c)."""
    g = _gen(11)
    hidden = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    weight = 0.8 * torch.randn(V, 6, generator=g, dtype=torch.float64)
    bias = torch.randn(V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (3, 5), generator=g)
    labels[0, :2] = -100
    results = []
    for impl, chunk in (("engine", 4), ("engine", None), ("reference", None)):
        leaves = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
        out = O.compute_from_hidden(
            name, leaves[0], leaves[1], labels, bias=leaves[2], softcap=2.0, implementation=impl,
            chunk_size=chunk, generator=_gen(), return_draws=True, **PARAMS[name],
        )  # fmt: skip
        out.loss.backward()
        results.append((out, [x.grad for x in leaves]))
    leaves = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]  # by hand, plain autograd
    z = 2.0 * torch.tanh(nn.functional.linear(*leaves) / 2.0)
    plain = O.compute(name, z, labels, implementation="reference", generator=_gen(), **PARAMS[name])
    plain.loss.backward()
    results.append((plain, [x.grad for x in leaves]))
    ref, ref_grads = results[-1]
    assert max(float(gr.abs().max()) for gr in ref_grads) > 1e-3
    for out, grads in results[:-1]:
        torch.testing.assert_close(out.loss.detach(), ref.loss.detach(), rtol=1e-10, atol=1e-12)
        assert out.metrics == pytest.approx(ref.metrics, rel=1e-10, abs=1e-12)
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    if O.is_sampled(name):
        assert all(torch.equal(o.draws, results[0][0].draws) for o, _ in results[1:-1])
    with torch.no_grad():  # the no-grad branch caps in place: same loss
        nograd = O.compute_from_hidden(name, hidden, weight, labels, bias=bias, softcap=2.0, chunk_size=4,
                                       generator=_gen(), **PARAMS[name])  # fmt: skip
    torch.testing.assert_close(nograd.loss, ref.loss.detach(), rtol=1e-10, atol=1e-12)
    uncapped = O.compute_from_hidden(
        name, hidden, weight, labels, bias=bias, generator=_gen(), **PARAMS[name]
    )
    assert abs(float(uncapped.loss - ref.loss.detach())) > 1e-3  # the cap matters here


@pytest.mark.parametrize("impl", O.IMPLEMENTATIONS)
def test_softcap_validation(impl):
    hidden, weight, labels = torch.zeros(2, 4), torch.zeros(V, 4), torch.zeros(2, dtype=torch.long)
    for bad in (0.0, -1.0, float("inf"), "3"):
        with pytest.raises(ValueError, match="softcap must be a finite number > 0 or None"):
            O.compute_from_hidden("sft", hidden, weight, labels, softcap=bad, implementation=impl)


# ------------------------------------------------------------------------------------------------------
# Equality: every objective, every family
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("name", ALL)
def test_fused_equals_logits(kind, name):
    """Loss, diagnostics and every parameter's gradient, fp64, several tiles, prompt and padding masked."""
    model = _model(kind)
    batch = _batch()
    ref, ref_grads = _logits_path(model, batch, name, **PARAMS[name])
    fused.enable_fused_objective(model)
    out, grads = _fused_path(model, batch, name, **PARAMS[name])
    assert max(g.abs().max() for g in grads.values()) > 1e-4  # not trivially zero
    _assert_same(out, grads, ref, ref_grads)


def test_families_are_what_they_claim():
    """The cases above cover what they should: GPT-2 is tied, Gemma 2 soft-caps (and the cap matters)."""
    gpt2, gemma = _model("gpt2"), _model("gemma2")
    assert gpt2.lm_head.weight is gpt2.get_input_embeddings().weight
    assert fused.check_fusable(gemma)[1] == SOFTCAP and fused.check_fusable(gpt2)[1] is None
    with torch.no_grad():  # soft-capping changes these logits a lot: a dropped cap would be caught
        logits = gemma(**{k: v for k, v in _batch().items() if k != "labels"}).logits
    assert logits.abs().max() > 0.8 * SOFTCAP


@pytest.mark.parametrize("name", ["sft", "otr", "entropy_sft"])
def test_lm_head_bias(name):
    """An LM head with a bias: the bias gets its gradient, equal to the logits path's."""
    model = _model("llama", bias=True)
    batch = _batch()
    ref, ref_grads = _logits_path(model, batch, name, **PARAMS[name])
    out, grads = _fused_path(model, batch, name, **PARAMS[name])
    assert "lm_head.bias" in grads
    _assert_same(out, grads, ref, ref_grads)


@pytest.mark.parametrize("name", ["dft", "otr"])
def test_softcap_with_bias_and_one_tile_per_row(name):
    """Gemma 2's cap with an untied, biased head; tiles of one row (every row is a boundary)."""
    model = _model("gemma2", bias=True)
    batch = _batch()
    ref, ref_grads = _logits_path(model, batch, name, **PARAMS[name])
    out, grads = _fused_path(model, batch, name, chunk_size=1, **PARAMS[name])
    _assert_same(out, grads, ref, ref_grads)


@pytest.mark.parametrize("name", ["sft", "otr"])
def test_packing_position_ids(name):
    """Padding-free packing (one row, position_ids restarting per example): the same on both paths."""
    model = _model("qwen2")
    examples = [{"input_ids": list(range(3, 10)), "labels": [-100] * 3 + list(range(6, 10))},
                {"input_ids": list(range(20, 26)), "labels": [-100] * 2 + list(range(22, 26))}]  # fmt: skip
    packed = PackingCollator()(examples)
    assert packed["position_ids"].tolist()[0][7] == 0  # the second example restarts
    batch = {
        "input_ids": packed["input_ids"],
        "position_ids": packed["position_ids"],
        "labels": packed["labels"],
    }
    assert torch.equal(fused.shift_labels(packed["labels"]), packed["shift_labels"])
    ref, ref_grads = _logits_path(model, batch, name, **PARAMS[name])
    out, grads = _fused_path(model, batch, name, chunk_size=3, **PARAMS[name])
    _assert_same(out, grads, ref, ref_grads)


def test_lora_adapters_elsewhere():
    """LoRA on the attention projections (PEFT model): the adapters' gradients are equal."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_model("llama"), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA's B starts at zero: make the adapters matter
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0.0, 0.3)
    batch = _batch()
    ref, ref_grads = _logits_path(model, batch, "otr", **PARAMS["otr"])
    out, grads = _fused_path(model, batch, "otr", **PARAMS["otr"])
    assert grads and all("lora_" in n for n in grads)
    _assert_same(out, grads, ref, ref_grads)


def test_gradient_checkpointing():
    """Decoder layers recomputed in the backward pass: still equal."""
    model = _model("llama")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = _batch()
    ref, ref_grads = _logits_path(model, batch, "dft")
    out, grads = _fused_path(model, batch, "dft")
    _assert_same(out, grads, ref, ref_grads)


def test_per_sequence_requests():
    """``per_sequence``: one output per row, sharing the generator in row order, as the logits path does."""
    model = _model("mistral")
    batch = _batch()
    labels = fused.shift_labels(batch.pop("labels"))
    g = _gen(3)
    logits = model(**batch, use_cache=False).logits
    refs = [O.compute("otr", logits[i], labels[i], generator=g, **PARAMS["otr"]) for i in range(3)]
    spec = fused.FusedObjective("otr", labels, PARAMS["otr"], _gen(3), per_sequence=True, chunk_size=2)
    fused.enable_fused_objective(model)
    outs = model(**batch, use_cache=False, fused_objective=spec)
    assert len(outs) == 3
    for out, ref in zip(outs, refs, strict=True):
        torch.testing.assert_close(out.loss, ref.loss, rtol=1e-10, atol=1e-12)
        assert out.metrics == pytest.approx(ref.metrics, rel=1e-9)


def test_sampled_fp32_same_seed_same_loss():
    """OTR in fp32 (default tiles): the same seed gives the same loss on both paths, another seed not."""
    model = _model("llama").float()
    batch = _batch()
    ref, _ = _logits_path(model, batch, "otr", seed=5, k=16)
    out, _ = _fused_path(model, batch, "otr", seed=5, chunk_size=None, k=16)
    other, _ = _fused_path(model, batch, "otr", seed=6, chunk_size=None, k=16)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-5)
    assert out.metrics["draw_hit_rate"] == ref.metrics["draw_hit_rate"]
    assert abs(float(other.loss.detach()) - float(out.loss.detach())) > 1e-4


# ------------------------------------------------------------------------------------------------------
# The patch itself
# ------------------------------------------------------------------------------------------------------
def test_patch_is_transparent_and_reversible():
    model = _model("llama")
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        before = model(**batch).logits
    rng = torch.get_rng_state()
    fused.enable_fused_objective(model)
    assert torch.equal(torch.get_rng_state(), rng)  # the probe forward left the global RNG alone
    fused.enable_fused_objective(model)  # idempotent
    assert fused.is_enabled(model)
    sig = inspect.signature(model.forward).parameters  # the Trainer keeps columns by these names
    assert {"input_ids", "attention_mask", "position_ids", "fused_objective"} <= set(sig)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)  # no request: the original forward
    with pytest.raises(ValueError, match="labels in FusedObjective"):
        model(
            **batch,
            labels=batch["input_ids"],
            fused_objective=fused.FusedObjective("sft", batch["input_ids"]),
        )
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(**batch, logits_to_keep=1, fused_objective=fused.FusedObjective("sft", batch["input_ids"]))
    fused.disable_fused_objective(model)
    assert (
        not fused.is_enabled(model)
        and "forward" not in model.__dict__
        and "forward" not in model.lm_head.__dict__
    )


def _one_line_refusal(model, model_type: str, reason: str) -> None:
    with pytest.raises(fused.FusedHeadError) as info:
        fused.enable_fused_objective(model)
    msg = str(info.value)
    assert "\n" not in msg and model_type in msg and "training_path: logits" in msg, msg
    assert reason in msg, msg
    assert not fused.is_enabled(model)


def test_refuses_logit_scaling():
    cohere = T.AutoModelForCausalLM.from_config(T.CohereConfig(vocab_size=V, **SMALL, logit_scale=0.25))
    _one_line_refusal(cohere, "cohere", "logit_scale=0.25")
    granite = T.AutoModelForCausalLM.from_config(T.GraniteConfig(vocab_size=V, **SMALL, logits_scaling=4.0))
    _one_line_refusal(granite, "granite", "logits_scaling=4.0")
    llama = _model("llama", output_multiplier=2.0)
    _one_line_refusal(llama, "llama", "output_multiplier=2.0")
    ok = T.AutoModelForCausalLM.from_config(T.GraniteConfig(vocab_size=V, **SMALL, logits_scaling=1.0))
    fused.enable_fused_objective(ok)  # a scale of 1 is no scale


def test_refuses_lora_or_modules_to_save_on_lm_head():
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(_model("llama"), peft.LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    _one_line_refusal(lora, "llama", "LoRA or modules_to_save on lm_head")
    saved = peft.get_peft_model(
        _model("qwen2"), peft.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    )
    _one_line_refusal(saved, "qwen2", "LoRA or modules_to_save on lm_head")


def test_refuses_a_head_that_is_not_a_plain_linear():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = _model("mistral")
    model.lm_head = Scaled(H, V, bias=False, dtype=torch.float64)
    _one_line_refusal(model, "mistral", "Scaled, not a plain nn.Linear")


def test_probe_refuses_unknown_post_processing():
    """Logits changed after the head (no config attribute says so), or a head never called: refused."""

    class Doubled(T.LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    class Bypass(T.LlamaForCausalLM):
        def forward(self, input_ids=None, **kwargs):
            hidden = self.model(input_ids=input_ids).last_hidden_state
            return T.modeling_outputs.CausalLMOutput(logits=nn.functional.linear(hidden, self.lm_head.weight))

    cfg = T.LlamaConfig(vocab_size=V, **SMALL, num_key_value_heads=2)
    _one_line_refusal(Doubled(cfg), "llama", "post-processes its logits")
    _one_line_refusal(Bypass(cfg), "llama", "calls its LM head 0 times")


# ------------------------------------------------------------------------------------------------------
# ObjectiveTrainer: fused vs logits, 2 optimizer steps x gradient accumulation 2
# ------------------------------------------------------------------------------------------------------
def _examples(n: int = 8, seed: int = 2) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 6 + i % 4
        ids = torch.randint(1, V, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    return out


def _train(tmp_path, path: str, name: str, normalization: str, packing: bool):
    from harness.training.trainer import ObjectiveTrainer

    model = _model("llama")
    args = T.TrainingArguments(
        output_dir=str(tmp_path / path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        max_steps=2, learning_rate=3e-2, logging_steps=1, report_to="none", use_cpu=True, seed=0,
        remove_unused_columns=False, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = ObjectiveTrainer(
        model=model, args=args, train_dataset=_examples(),
        data_collator=PackingCollator() if packing else Collator(0),
        objective_name=name, objective_params=PARAMS[name], run_seed=7, loss_normalization=normalization,
        training_path=path,
    )  # fmt: skip
    losses = []
    compute_loss = trainer.compute_loss

    def recording(*a, **kw):
        loss = compute_loss(*a, **kw)
        losses.append(float(loss.detach()))
        return loss

    trainer.compute_loss = recording
    trainer.train()
    logs = [{k: v for k, v in row.items() if k not in ("peak_memory_mb", "learning_rate")}
            for row in trainer.state.log_history if "loss" in row]  # fmt: skip
    return losses, logs, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize(
    ("name", "normalization", "packing"),
    [("otr", "tokens", False), ("entropy_sft", "sequences", False), ("otr_exact", "tokens", True)],
)
def test_trainer_fused_equals_logits(tmp_path, name, normalization, packing):
    """Same micro-batch losses, logged diagnostics and weights after 2 steps (AdamW, GA 2) on both paths."""
    losses_l, logs_l, weights_l = _train(tmp_path, "logits", name, normalization, packing)
    losses_f, logs_f, weights_f = _train(tmp_path, "fused", name, normalization, packing)
    assert len(losses_f) == len(losses_l) == 4
    assert losses_f == pytest.approx(losses_l, rel=1e-9)
    assert len(logs_f) == len(logs_l) == 2
    for a, b in zip(logs_f, logs_l, strict=True):
        assert set(a) == set(b) and a == pytest.approx(b, rel=1e-8)
    before = _model("llama").state_dict()
    assert any(not torch.equal(weights_l[n], before[n]) for n in weights_l)  # it did train
    for n in weights_l:
        torch.testing.assert_close(weights_f[n], weights_l[n], rtol=1e-9, atol=1e-11)


def test_trainer_rejects_unknown_path():
    from harness.training.trainer import ObjectiveTrainer

    with pytest.raises(ValueError, match="training_path must be one of fused, logits"):
        ObjectiveTrainer(model=_model("llama"), objective_name="sft", objective_params={}, run_seed=0,
                         training_path="fast")  # fmt: skip
