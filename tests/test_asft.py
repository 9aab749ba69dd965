"""Anchored SFT (``asft``): DFT + alpha KL(pi_ref || pi) to a frozen reference model.

The direction is LLaMA-Factory's (``use_asft_loss``: ``F.kl_div(log_softmax(policy), softmax(ref))``),
so the KL term's gradient with respect to the policy logits is alpha (pi - pi_ref). Pinned here:
* the identities: alpha = 0 is DFT exactly; the gradient of the KL term is alpha (pi - pi_ref) (closed
  form, independently of both implementations); policy == reference makes the KL term and ``kl_ref`` 0;
* the engine against the plain-autograd reference (``objectives.reference``, fp64), ignored positions
  included, and the tiles (``compute_from_hidden``, the reference's head in the same tiles, soft-cap and
  bias on both sides) against the logits, with no ``[N, V]`` allocation on the tiled path;
* the fused training path against the logits path on a tiny Llama (and Gemma 2's soft-cap), every
  parameter's gradient; the LoRA reference (adapters disabled) against the base model;
* ``ObjectiveTrainer``: fused == logits over 2 steps (packing, sequences normalisation, gradient
  checkpointing), the first step's ``kl_ref`` is 0, the reference never changes, refusals in one line;
* a real run on the tiny toy world through ``recipe.train`` (slow).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers as T
from test_fused import _batch as _model_batch
from test_fused import _examples, _grads, _model
from test_fused import _gen as _gen
from torch import nn
from torch.profiler import ProfilerActivity, profile

from harness import objectives as O
from harness.objectives import reference
from harness.training import fused
from harness.training.data import Collator, PackingCollator

V = 11


def _batch(b=3, t=5, v=V, dtype=torch.float64, seed=0):
    """Random policy logits, reference logits and labels with a "prompt" and "padding" ignored."""
    g = _gen(seed)
    logits = (2.0 * torch.randn(b, t, v, generator=g)).to(dtype)
    ref = (2.0 * torch.randn(b, t, v, generator=g)).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :2] = O.IGNORE_INDEX
    labels[-1, -1] = O.IGNORE_INDEX
    return logits, ref, labels


def _run(name, logits, labels, impl="engine", **kw):
    leaf = logits.detach().clone().requires_grad_(True)
    out = O.compute(name, leaf, labels, implementation=impl, **kw)
    out.loss.backward()
    return out, leaf.grad


# ------------------------------------------------------------------------------------------------------
# The identities
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_alpha_zero_is_dft_exactly(dtype):
    """alpha = 0: the same loss, gradient and diagnostics as dft, bit for bit (plus kl_ref)."""
    logits, ref, labels = _batch(dtype=dtype)
    dft, g_dft = _run("dft", logits, labels)
    asft, g_asft = _run("asft", logits, labels, ref_logits=ref, alpha=0.0)
    assert torch.equal(asft.loss, dft.loss) and torch.equal(g_asft, g_dft)
    assert asft.metrics == {**dft.metrics, "kl_ref": asft.metrics["kl_ref"]} and asft.metrics["kl_ref"] > 0.1
    assert asft.num_tokens == dft.num_tokens


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_kl_term_gradient_is_alpha_pi_minus_pi_ref(alpha):
    """Closed form, independent of both implementations: grad(asft) - grad(dft) = alpha (pi - pi_ref) at
    every response position (0 elsewhere), and the loss difference is alpha sum_t KL(pi_ref || pi) -- the
    forward KL, which differs from the reverse KL(pi || pi_ref) here by far more than rounding."""
    logits, ref, labels = _batch(seed=3)
    mask = labels != O.IGNORE_INDEX
    pi, pi_ref = torch.softmax(logits, -1), torch.softmax(ref, -1)
    forward_kl = (pi_ref * (pi_ref.log() - pi.log())).sum(-1)[mask]
    reverse_kl = (pi * (pi.log() - pi_ref.log())).sum(-1)[mask]
    assert (forward_kl - reverse_kl).abs().sum() > 0.1  # the test can tell the directions apart
    dft, g_dft = _run("dft", logits, labels)
    for impl in O.IMPLEMENTATIONS:
        asft, g_asft = _run("asft", logits, labels, impl=impl, ref_logits=ref, alpha=alpha)
        expected = torch.where(mask[..., None], alpha * (pi - pi_ref), 0.0)
        torch.testing.assert_close(g_asft - g_dft, expected, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(asft.loss - dft.loss, alpha * forward_kl.sum(), rtol=1e-10, atol=1e-12)
        assert asft.metrics["kl_ref"] == pytest.approx(float(forward_kl.mean()), rel=1e-10)


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_matches_autograd_reference(alpha):
    """Engine (closed-form gradient) == plain autograd through LLaMA-Factory's formula, fp64."""
    logits, ref, labels = _batch(seed=1)
    out, grad = _run("asft", logits, labels, ref_logits=ref, alpha=alpha)
    oracle, oracle_grad = _run("asft", logits, labels, impl="reference", ref_logits=ref, alpha=alpha)
    assert grad.abs().max() > 1e-3
    torch.testing.assert_close(out.loss, oracle.loss.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, oracle_grad, rtol=1e-9, atol=1e-10)
    assert out.num_tokens == oracle.num_tokens == int((labels != -100).sum())
    assert out.metrics == pytest.approx(oracle.metrics, rel=1e-12, abs=1e-14)
    assert set(out.metrics) == set(O.METRICS) | {"kl_ref"}
    assert bool((grad[labels == -100] == 0).all())  # ignored positions: no gradient, whatever pi_ref says
    leaf = logits.clone().requires_grad_(True)  # the formula alone
    reference.reference_loss("asft", leaf, labels, params={"alpha": alpha}, ref_logits=ref).backward()
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-9, atol=1e-10)


def test_zero_when_policy_is_reference():
    """pi == pi_ref (the same logits, or logits shifted by a constant per row): KL term 0, loss == dft."""
    logits, _, labels = _batch(seed=2)
    dft, g_dft = _run("dft", logits, labels)
    for ref in (logits.clone(), logits + torch.linspace(-3, 3, labels.numel()).view(*labels.shape, 1)):
        for impl in O.IMPLEMENTATIONS:
            out, grad = _run("asft", logits, labels, impl=impl, ref_logits=ref, alpha=1.0)
            torch.testing.assert_close(out.loss, dft.loss, rtol=1e-13, atol=1e-13)
            torch.testing.assert_close(grad, g_dft, rtol=1e-12, atol=1e-14)
            assert abs(out.metrics["kl_ref"]) < 1e-13
    out, _ = _run("asft", logits, labels, ref_logits=logits, alpha=1.0)
    assert out.metrics["kl_ref"] == 0.0 and torch.equal(out.loss, dft.loss)  # the same logits: exactly 0


# ------------------------------------------------------------------------------------------------------
# Chunks, tiles, memory, dtypes, bad input
# ------------------------------------------------------------------------------------------------------
def test_chunks_and_tiles_equal_logits():
    """Chunked logits, and tiles from hidden states (bias and soft-cap on both sides, the reference's head
    of another width), equal plain autograd on the full logits; gradients reach the policy side only."""
    g = _gen(5)
    b, t, h, h_ref = 3, 5, 6, 4
    hidden, weight, bias = (
        torch.randn(*s, generator=g, dtype=torch.float64) for s in ((b, t, h), (V, h), (V,))
    )
    ref_h, ref_w, ref_b = (
        torch.randn(*s, generator=g, dtype=torch.float64) for s in ((b, t, h_ref), (V, h_ref), (V,))
    )
    _, _, labels = _batch(b, t, seed=5)
    leaves = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
    z = 3.0 * torch.tanh(nn.functional.linear(*leaves) / 3.0)
    ref_z = 2.0 * torch.tanh(nn.functional.linear(ref_h, ref_w, ref_b) / 2.0)
    oracle = O.compute("asft", z, labels, implementation="reference", ref_logits=ref_z, alpha=0.5)
    oracle.loss.backward()
    for chunk in (1, 3, None):
        out, grad = _run("asft", z.detach(), labels, ref_logits=ref_z, alpha=0.5, chunk_size=chunk)
        torch.testing.assert_close(out.loss, oracle.loss.detach(), rtol=1e-12, atol=1e-12)
        ref_side = [x.clone().requires_grad_(True) for x in (ref_h, ref_w, ref_b)]
        tiles = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
        for impl in O.IMPLEMENTATIONS:
            out = O.compute_from_hidden(
                "asft", *tiles[:2], labels, bias=tiles[2], softcap=3.0, ref_hidden=ref_side[0],
                ref_weight=ref_side[1], ref_bias=ref_side[2], ref_softcap=2.0, chunk_size=chunk, alpha=0.5,
                implementation=impl,
            )  # fmt: skip
            out.loss.backward()
            torch.testing.assert_close(out.loss, oracle.loss, rtol=1e-12, atol=1e-12)
            assert out.metrics == pytest.approx(oracle.metrics, rel=1e-12)
            for a, r in zip(tiles, leaves, strict=True):
                torch.testing.assert_close(a.grad, r.grad, rtol=1e-10, atol=1e-12)
                a.grad = None
            assert all(x.grad is None for x in ref_side)  # the reference is a constant


def _largest_allocation_mib(fn) -> float:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(e.cpu_memory_usage for e in prof.events()) / 2**20


def test_tiles_never_allocate_reference_logits():
    """The reference's logits exist one tile at a time: the largest allocation of the tiled call is a
    [chunk, V] block, while [N, V] is 16 MiB (the plain-autograd implementation shows it: power)."""
    g = _gen(6)
    b, t, h, v, chunk = 8, 256, 16, 2048, 64
    hidden = torch.randn(b, t, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    ref_h, ref_w = torch.randn(b, t, h, generator=g), torch.randn(v, h, generator=g)
    labels = torch.randint(0, v, (b, t), generator=g)

    def call(impl):
        out = O.compute_from_hidden(
            "asft", hidden, weight, labels, ref_hidden=ref_h, ref_weight=ref_w, chunk_size=chunk,
            implementation=impl,
        )  # fmt: skip
        out.loss.backward()

    full = b * t * v * 4 / 2**20
    assert _largest_allocation_mib(lambda: call("engine")) <= 2 * chunk * v * 4 / 2**20 < full / 8
    assert _largest_allocation_mib(lambda: call("reference")) >= full


def test_bf16_and_no_response_tokens():
    logits, ref, labels = _batch(b=4, t=8, v=64, dtype=torch.float32, seed=7)
    logits, ref = logits.bfloat16().float(), ref.bfloat16().float()
    o32, g32 = _run("asft", logits, labels, ref_logits=ref, alpha=0.3)
    o16, g16 = _run("asft", logits.bfloat16(), labels, ref_logits=ref.bfloat16(), alpha=0.3)
    assert g16.dtype == torch.bfloat16 and bool(torch.isfinite(g16).all())
    torch.testing.assert_close(o16.loss, o32.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g16.float(), g32, rtol=1e-2, atol=2e-3)
    labels[:] = O.IGNORE_INDEX
    out, grad = _run("asft", logits, labels, ref_logits=ref)
    assert out.num_tokens == 0 and out.loss.item() == 0.0 and bool((grad == 0).all())
    assert out.metrics["kl_ref"] == 0.0


@pytest.mark.parametrize("impl", O.IMPLEMENTATIONS)
def test_reference_side_is_checked(impl):
    logits, ref, labels = _batch()
    hidden, weight = torch.zeros(3, 5, 4), torch.zeros(V, 4)
    cases = [
        (lambda: O.compute("asft", logits, labels, implementation=impl),
         "objective 'asft' needs the frozen reference model's logits: pass ref_logits="),
        (lambda: O.compute("dft", logits, labels, ref_logits=ref, implementation=impl),
         "objective 'dft' takes no reference model (ref_logits=); objectives that do: asft"),
        (lambda: O.compute("asft", logits, labels, ref_logits=ref[..., :-1], implementation=impl),
         "ref_logits (3, 5, 10) and logits (3, 5, 11) differ"),
        (lambda: O.compute_from_hidden("asft", hidden, weight, labels, implementation=impl),
         "objective 'asft' needs the frozen reference model's logits: pass ref_hidden= and ref_weight="),
        (lambda: O.compute_from_hidden("asft", hidden, weight, labels, ref_hidden=hidden, implementation=impl),
         "ref_hidden and ref_weight go together"),
        (lambda: O.compute_from_hidden("asft", hidden, weight, labels, ref_hidden=hidden[:, :-1],
                                       ref_weight=weight, implementation=impl),
         "ref_hidden (3, 4, 4) and ref_weight (11, 4) do not align"),
        (lambda: O.compute_from_hidden("asft", hidden, weight, labels, ref_hidden=hidden, ref_weight=weight,
                                       ref_softcap=0.0, implementation=impl),
         "ref_softcap must be a finite number > 0 or None"),
        (lambda: O.compute("asft", logits, labels, ref_logits=ref, alpha=-0.1, implementation=impl),
         "objective 'asft': alpha must be >= 0.0 (got -0.1)"),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_registry():
    assert O.needs_reference("asft") and not any(O.needs_reference(n) for n in ("sft", "dft", "otr"))
    assert O.validate_params("asft").alpha == 0.1  # LLaMA-Factory's asft_alpha default
    assert O.samples_per_token("asft") == 0 and not O.is_sampled("asft")


# ------------------------------------------------------------------------------------------------------
# Through a model: the fused path == the logits path; the LoRA reference
# ------------------------------------------------------------------------------------------------------
def _frozen_copy(model: nn.Module) -> nn.Module:
    """The reference: the model as it is now, eval(), no gradients."""
    ref = type(model)(model.config).double()
    ref.load_state_dict(model.state_dict())
    return ref.eval().requires_grad_(False)


def _perturb(model: nn.Module, seed: int = 9) -> None:
    """Move the policy away from its reference (as a few training steps would)."""
    g = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_fused_equals_logits_on_a_tiny_model(kind):
    """Loss, kl_ref and every policy parameter's gradient, fp64, several tiles; none for the reference."""
    policy = _model(kind)
    ref_model = _frozen_copy(policy)
    _perturb(policy)
    batch = _model_batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        ref_logits = ref_model(**inputs, use_cache=False).logits
    logits = policy(**inputs, use_cache=False).logits
    plain = O.compute("asft", logits, fused.shift_labels(batch["labels"]), ref_logits=ref_logits, alpha=0.7)
    plain.loss.backward()
    plain_grads = _grads(policy)
    out = fused.fused_loss(policy, batch, "asft", chunk_size=5, reference_model=ref_model, alpha=0.7)
    out.loss.backward()
    grads = _grads(policy)
    assert plain.metrics["kl_ref"] > 1e-3  # the policy moved: the anchor pulls
    torch.testing.assert_close(out.loss.detach(), plain.loss.detach(), rtol=1e-10, atol=1e-12)
    assert out.metrics == pytest.approx(plain.metrics, rel=1e-8, abs=1e-10)
    assert set(grads) == set(plain_grads) and len(grads) > 0
    for n in grads:
        torch.testing.assert_close(
            grads[n], plain_grads[n], rtol=1e-10, atol=1e-12, msg=lambda m, n=n: f"{n}: {m}"
        )
    assert all(p.grad is None for p in ref_model.parameters())


def test_lora_reference_is_the_base_with_adapters_disabled():
    """With LoRA the reference is the policy with its adapters disabled: its logits equal the base
    model's (the adapters' own differ), on both paths, and the policy's training mode is restored."""
    from peft import LoraConfig, get_peft_model

    from harness.training.reference import ReferenceModel

    base = _model("llama")
    twin = _frozen_copy(base)  # the base, kept apart
    policy = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B = 0 at init: make the adapters do something
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.3)
    policy.train()
    batch = _model_batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    reference = ReferenceModel.for_policy(policy, None, "asft")
    with torch.no_grad():
        expected = twin(**inputs).logits
        adapted = policy(**inputs).logits
    assert (adapted - expected).abs().max() > 1e-2
    torch.testing.assert_close(reference.logits(policy, inputs), expected, rtol=1e-12, atol=1e-12)
    fused.enable_fused_objective(policy)
    head = reference.head(policy, inputs)
    logits = nn.functional.linear(head.hidden, head.weight, head.bias)
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    assert policy.training and not head.hidden.requires_grad
    with pytest.raises(ValueError, match="needs the frozen reference model: pass reference_model="):
        ReferenceModel.for_policy(_model("llama"), None, "asft")


# ------------------------------------------------------------------------------------------------------
# ObjectiveTrainer: fused == logits, kl_ref starts at 0, the reference never changes, refusals
# ------------------------------------------------------------------------------------------------------
def _train(tmp_path, path: str, normalization: str = "tokens", packing: bool = False, checkpointing=False):
    from harness.training.trainer import ObjectiveTrainer

    policy = _model("llama")
    ref_model = _frozen_copy(policy)
    before = {n: p.clone() for n, p in ref_model.state_dict().items()}
    args = T.TrainingArguments(
        output_dir=str(tmp_path / path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        max_steps=2, learning_rate=3e-2, logging_steps=1, report_to="none", use_cpu=True, seed=0,
        remove_unused_columns=False, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        activation_checkpointing=checkpointing,
    )  # fmt: skip
    trainer = ObjectiveTrainer(
        model=policy, args=args, train_dataset=_examples(),
        data_collator=PackingCollator() if packing else Collator(0),
        objective_name="asft", objective_params={"alpha": 0.5}, run_seed=7, loss_normalization=normalization,
        training_path=path, reference_model=ref_model,
    )  # fmt: skip
    trainer.train()
    assert trainer.model.is_activation_checkpointing == checkpointing
    for n, p in ref_model.state_dict().items():  # frozen: not trained, not moved to another dtype
        assert torch.equal(p, before[n]), n
    assert all(not p.requires_grad for p in ref_model.parameters()) and not ref_model.training
    logs = [{k: v for k, v in row.items() if k not in ("peak_memory_mb", "learning_rate")}
            for row in trainer.state.log_history if "loss" in row]  # fmt: skip
    return logs, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize(
    ("normalization", "packing", "checkpointing"),
    [("tokens", False, False), ("sequences", False, False), ("tokens", True, True)],
)
def test_trainer_fused_equals_logits(tmp_path, normalization, packing, checkpointing):
    logs_l, weights_l = _train(tmp_path, "logits", normalization, packing, checkpointing)
    logs_f, weights_f = _train(tmp_path, "fused", normalization, packing, checkpointing)
    assert len(logs_f) == len(logs_l) == 2
    for a, b in zip(logs_f, logs_l, strict=True):
        assert set(a) == set(b) and a == pytest.approx(b, rel=1e-8, abs=1e-12)
    assert logs_f[0]["kl_ref"] == pytest.approx(0.0, abs=1e-12)  # step 1: the policy is the reference
    assert logs_f[1]["kl_ref"] > 1e-6  # then it moves away, and the anchor measures it
    for n in weights_l:
        torch.testing.assert_close(weights_f[n], weights_l[n], rtol=1e-9, atol=1e-11)


def test_trainer_refusals(tmp_path, monkeypatch):
    from harness.config import ConfigError
    from harness.training.trainer import ObjectiveTrainer

    args = T.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    common = dict(args=args, objective_params={}, run_seed=0)
    with pytest.raises(
        ValueError, match="objective 'asft' needs the frozen reference model: pass reference_model="
    ):
        ObjectiveTrainer(model=_model("llama"), objective_name="asft", **common)
    with pytest.raises(ValueError, match="objective 'sft' takes no reference model"):
        ObjectiveTrainer(
            model=_model("llama"), objective_name="sft", reference_model=_model("llama"), **common
        )
    original = ObjectiveTrainer.create_accelerator_and_postprocess

    def as_fsdp(self):
        original(self)
        self.is_fsdp_enabled = True

    monkeypatch.setattr(ObjectiveTrainer, "create_accelerator_and_postprocess", as_fsdp)
    with pytest.raises(
        ConfigError, match="launcher: objective 'asft' needs a frozen reference model"
    ) as info:
        ObjectiveTrainer(
            model=_model("llama"), objective_name="asft", reference_model=_model("llama"), **common
        )
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------------
# A real run on the tiny toy world (slow: builds or loads the world)
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lora", [False, True])
def test_real_run_on_the_toy_world(tmp_path, tiny_toy, monkeypatch, lora):
    """``recipe.train`` end to end (the base loaded once more, or the adapters disabled, with gradient
    checkpointing): the first step's kl_ref is 0 (policy == reference), the loss is finite, the reference
    never changes, kl_ref grows."""
    from test_train_formats import _run_cfg, _write_format

    from harness.config import parse_run_config
    from harness.runs.layout import RunDir
    from harness.training import recipe

    cfg, _ = tiny_toy
    dataset, _, _ = _write_format(tmp_path, "prompt_response")
    extra = {"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}} if lora else {}
    training = {"max_steps": 3, "optim": "adamw_torch", "learning_rate": 5e-2}  # move away from the base
    training |= {"gradient_checkpointing": True} if lora else {}  # the adapter-free forward in eval: none
    run = RunDir(tmp_path / "run")
    run_cfg = parse_run_config(
        _run_cfg(cfg, dataset, {"name": "asft", "alpha": 0.1}, training=training, **extra)
    )
    seen = {}
    build = recipe.build_trainer

    def spy(*args, **kwargs):  # the trainer train() builds, and its reference before training
        trainer, stats = build(*args, **kwargs)
        model = trainer.reference.model or trainer.model
        seen.update(trainer=trainer, frozen={n: p.detach().clone() for n, p in model.state_dict().items()})
        return trainer, stats

    monkeypatch.setattr(recipe, "build_trainer", spy)
    summary = recipe.train(run_cfg, run)
    trainer, frozen = seen["trainer"], seen["frozen"]
    assert summary["steps"] == 3 and math.isfinite(summary["train_loss"])
    metrics = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert metrics[0]["kl_ref"] == pytest.approx(0.0, abs=1e-6)
    assert metrics[-1]["kl_ref"] > 1e-3
    reference = trainer.reference
    assert (reference.model is None) == lora  # LoRA: no second copy
    assert trainer.model.is_activation_checkpointing == lora
    if lora:  # the base weights under the adapters are the reference: unchanged; the adapters trained
        now = trainer.model.state_dict()
        assert all(torch.equal(now[n], p) for n, p in frozen.items() if "lora_" not in n)
        assert any(not torch.equal(now[n], p) for n, p in frozen.items() if "lora_" in n)
    else:
        assert all(torch.equal(p, frozen[n]) for n, p in reference.model.state_dict().items())
        assert all(not p.requires_grad for p in reference.model.parameters())
        assert any(not torch.equal(p, frozen[n]) for n, p in trainer.model.state_dict().items())


def test_dropin_mixin_refuses_asft(tmp_path):
    """The drop-in mixin loads no reference model: asft is refused at construction, in one line."""
    from harness.training.dropin import FusedObjectiveMixin

    class Trainer(FusedObjectiveMixin, T.Trainer):
        pass

    args = T.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(
        ValueError, match="objective 'asft' needs a frozen reference model, which Fused"
    ) as info:
        Trainer(model=_model("llama"), args=args, objective="asft")
    assert "\n" not in str(info.value)
