"""Objectives: pinned to torch, to the plain-autograd ``reference`` implementation and to otr.md §2.

Monte Carlo tests replicate a few logit rows many times in one batch: every replicate is an independent
draw of the OTR estimator, so the tolerance is derived from the empirical standard error (5 sigma),
and each such test also checks it has the power to reject a nearby wrong answer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness import objectives as O
from harness.objectives import losses, reference

V = 11
# Objectives that need the frozen reference model's logits (asft) are tested in tests/test_asft.py.
ALL = [n for n in O.available() if not O.needs_reference(n)]
# non-default, "interesting" parameters: tau != 1 and beta != 0 exercise every term
PARAMS = {
    "sft": {},
    "dft": {},
    "otr": {"k": 6, "tau": 1.7, "beta": -0.3},
    "otr_exact": {"tau": 1.7, "beta": -0.3},
    "unlikelihood": {"alpha": 0.7, "k": 5, "tau": 1.0},
    "label_smoothing": {"eps": 0.2},
    "entropy_sft": {"lambda": 0.3},
    "asft": {"alpha": 0.3},
}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(b=3, t=5, v=V, dtype=torch.float64, seed=0, ignore=True):
    g = _gen(seed)
    logits = (2.0 * torch.randn(b, t, v, generator=g)).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    if ignore:
        labels[0, :2] = O.IGNORE_INDEX  # a "prompt"
        labels[-1, -1] = O.IGNORE_INDEX  # "padding"
    return logits, labels


def _run(name, logits, labels, seed=0, **kw):
    """Loss and gradient of objective ``name`` (params from PARAMS unless given)."""
    leaf = logits.detach().clone().requires_grad_(True)
    params = {**PARAMS[name], **kw}
    out = O.compute(name, leaf, labels, generator=_gen(seed), return_draws=O.is_sampled(name), **params)
    out.loss.backward()
    return out, leaf.grad


# ------------------------------------------------------------------------------------------------------
# The engine against the plain-autograd reference (harness.objectives.reference)
# ------------------------------------------------------------------------------------------------------
def _run_reference(name, logits, labels, seed=0, **kw):
    """``_run`` through ``implementation="reference"``: plain autograd on the full logits."""
    leaf = logits.detach().clone().requires_grad_(True)
    params = {**PARAMS[name], **kw}
    out = O.compute(
        name, leaf, labels, implementation="reference", generator=_gen(seed), return_draws=O.is_sampled(name),
        **params,
    )  # fmt: skip
    out.loss.backward()
    return out, leaf.grad


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("params", ["interesting", "defaults"])
def test_matches_autograd_reference(name, params):
    """Closed-form gradients inside the engine == autograd through the naive formula (fp64): same loss,
    gradient wrt the logits, metrics and (same generator, same uniforms) the same draws."""
    kw = {} if params == "interesting" else O.validate_params(name).model_dump(by_alias=True)
    logits, labels = _batch()
    out, grad = _run(name, logits, labels, **kw)
    ref, ref_grad = _run_reference(name, logits, labels, **kw)
    assert grad.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(out.loss, ref.loss.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-10)
    assert out.num_tokens == ref.num_tokens == int((labels != -100).sum())
    assert set(out.metrics) == set(ref.metrics)
    assert out.metrics == pytest.approx(ref.metrics, rel=1e-12, abs=1e-14)
    if O.is_sampled(name):
        assert torch.equal(out.draws, ref.draws)
        # reference_loss on the engine's own draws: the formula alone, independently of the sampler
        leaf = logits.clone().requires_grad_(True)
        reference.reference_loss(name, leaf, labels, out.draws, {**PARAMS[name], **kw}).backward()
        torch.testing.assert_close(grad, leaf.grad, rtol=1e-9, atol=1e-10)
    else:
        assert out.draws is None and ref.draws is None


@pytest.mark.parametrize("name", ALL)
def test_reference_from_hidden_and_fp32(name):
    """The reference's compute_from_hidden and its fp32 path agree with the engine too."""
    g = _gen(21)
    hidden = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(V, 6, generator=g, dtype=torch.float64)
    _, labels = _batch(seed=21)
    outs = []
    for impl in O.IMPLEMENTATIONS:
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        out = O.compute_from_hidden(name, h, w, labels, implementation=impl, generator=_gen(), **PARAMS[name])
        out.loss.backward()
        outs.append((out.loss.detach(), h.grad, w.grad))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    logits, labels = _batch(dtype=torch.float32, seed=22)
    out, grad = _run(name, logits, labels)
    ref, ref_grad = _run_reference(name, logits, labels)
    assert out.loss.dtype == ref.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref.loss.detach())
    torch.testing.assert_close(grad, ref_grad)


def test_implementation_selection():
    logits, labels = _batch()
    with pytest.raises(ValueError, match="unknown implementation 'fast'; valid: engine, reference"):
        O.compute("sft", logits, labels, implementation="fast")
    for fn in (O.compute, reference.compute):  # the reference validates like the engine
        with pytest.raises(ValueError, match="objective 'otr': k must be >= 1"):
            fn("otr", logits, labels, k=0)
        with pytest.raises(ValueError, match="do not align"):
            fn("sft", logits, labels[:, :-1])
    with pytest.raises(ValueError, match="needs its draws"):
        reference.reference_loss("otr", logits, labels, None, {})


def test_import_is_torch_free():
    """Planning a sweep validates objective parameters and must never import torch."""
    code = (
        "import sys; import harness.objectives as O, harness.objectives.params; "
        "O.validate_params('otr', {'k': 4}); O.samples_per_token('otr', {'k': 4}); O.available(); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'transformers' not in sys.modules, 'transformers imported'; "
        "assert {'OBJECTIVES', 'Rows', 'ObjectiveOutput', 'merge_metrics'} <= set(dir(O)); "
        "O.ObjectiveOutput; assert 'torch' in sys.modules; "
        "assert all(hasattr(O, n) for n in O.__all__)"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_sft_equals_torch_cross_entropy():
    logits, labels = _batch(dtype=torch.float32, seed=3)
    out, grad = _run("sft", logits, labels)
    leaf = logits.clone().requires_grad_(True)
    ref = F.cross_entropy(leaf.view(-1, V), labels.view(-1), ignore_index=-100, reduction="sum")
    ref.backward()
    torch.testing.assert_close(out.loss, ref.detach())
    torch.testing.assert_close(grad, leaf.grad)
    assert out.loss.dtype == torch.float32 and out.loss.shape == ()


def test_label_smoothing_equals_torch():
    logits, labels = _batch(seed=4)
    out, grad = _run("label_smoothing", logits, labels, eps=0.25)
    leaf = logits.clone().requires_grad_(True)
    ref = F.cross_entropy(leaf.view(-1, V), labels.view(-1), reduction="sum", label_smoothing=0.25)
    ref.backward()
    torch.testing.assert_close(out.loss, ref.detach())
    torch.testing.assert_close(grad, leaf.grad)


# ------------------------------------------------------------------------------------------------------
# The identities of otr.md §2
# ------------------------------------------------------------------------------------------------------
def test_otr_exact_tau1_beta0_is_dft():
    logits, labels = _batch(seed=5)
    exact, g_exact = _run("otr_exact", logits, labels, tau=1.0, beta=0.0)
    dft, g_dft = _run("dft", logits, labels)
    torch.testing.assert_close(exact.loss, dft.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_exact, g_dft, rtol=1e-12, atol=1e-12)
    assert g_dft.abs().max() > 1e-3  # not trivially zero
    # the general (tau != 1) code path converges to the same thing as tau -> 1
    _, g_near = _run("otr_exact", logits, labels, tau=1.0 + 1e-9, beta=0.0)
    torch.testing.assert_close(g_near, g_dft, rtol=1e-6, atol=1e-8)


def test_otr_exact_tau1_beta_scales_dft():
    logits, labels = _batch(seed=6)
    _, g_dft = _run("dft", logits, labels)
    for beta in (-0.5, -0.1, 0.3):
        _, g = _run("otr_exact", logits, labels, tau=1.0, beta=beta)
        torch.testing.assert_close(g, (1 - beta) * g_dft, rtol=1e-10, atol=1e-12)
    # ... and with tau != 1 the beta term no longer acts as a pure rescaling (§2)
    _, g0 = _run("otr_exact", logits, labels, tau=1.7, beta=0.0)
    _, gb = _run("otr_exact", logits, labels, tau=1.7, beta=-0.5)
    assert not torch.allclose(gb, 1.5 * g0, rtol=1e-3, atol=1e-6)


def _replicated(n_rep, seed=7, v=7):
    """3 logit rows (one confident-correct, one confident-wrong, one flat), each repeated n_rep times."""
    g = _gen(seed)
    base = torch.randn(3, v, generator=g, dtype=torch.float64)
    base[0, 2] += 3.0  # label 2 likely
    base[1, 4] += 3.0  # label 0 unlikely
    base[2] *= 0.3
    labels = torch.tensor([2, 0, 5])
    logits = base.repeat_interleave(n_rep, 0)[None]  # [1, 3 n, V]
    return base[None], labels[None], logits, labels.repeat_interleave(n_rep)[None]


def _mc_gradient(n_rep, k, seed, **params):
    """Per-row mean and standard error of the otr gradient over n_rep independent estimates."""
    _, _, logits, labels = _replicated(n_rep)
    _, grad = _run("otr", logits, labels, seed=seed, k=k, **params)
    grad = grad.view(3, n_rep, -1)
    return grad.mean(1), grad.std(1) / n_rep**0.5


def _assert_within(mean, se, expected, sigmas=5.0):
    err = (mean - expected).abs()
    bound = sigmas * se + 1e-12
    assert bool((err <= bound).all()), f"max err/se = {(err / (se + 1e-30)).max():.2f}"


def _violates(mean, se, wrong, sigmas=5.0):
    return bool(((mean - wrong).abs() > sigmas * se + 1e-12).any())


def test_otr_mean_gradient_converges_to_exact():
    """tau != 1, beta < 0: E over draws of the otr gradient == otr_exact's gradient."""
    tau, beta, n = 1.6, -0.4, 20000
    base, base_labels, _, _ = _replicated(1)
    mean, se = _mc_gradient(n, k=3, seed=11, tau=tau, beta=beta)
    _, exact = _run("otr_exact", base, base_labels, tau=tau, beta=beta)
    _assert_within(mean, se, exact[0])
    # power: sampling at the wrong temperature, or dropping beta, would have been caught
    _, wrong_tau = _run("otr_exact", base, base_labels, tau=1.0, beta=beta)
    _, wrong_beta = _run("otr_exact", base, base_labels, tau=tau, beta=0.0)
    assert _violates(mean, se, wrong_tau[0]) and _violates(mean, se, wrong_beta[0])


def test_otr_tau1_expected_gradient_is_one_minus_beta_times_beta0():
    """tau = 1: E[grad otr(beta)] = (1 - beta) E[grad otr(beta = 0)] = (1 - beta) grad DFT."""
    beta, n = -0.5, 20000
    base, base_labels, _, _ = _replicated(1)
    _, g_dft = _run("dft", base, base_labels)
    mean_b, se_b = _mc_gradient(n, k=4, seed=12, tau=1.0, beta=beta)
    mean_0, se_0 = _mc_gradient(n, k=4, seed=13, tau=1.0, beta=0.0)
    _assert_within(mean_0, se_0, g_dft[0])  # beta = 0: unbiased for DFT
    _assert_within(mean_b, se_b, (1 - beta) * g_dft[0])
    # the two estimates are independent: compare them directly too
    diff_se = ((1 - beta) ** 2 * se_0**2 + se_b**2).sqrt()
    _assert_within(mean_b, diff_se, (1 - beta) * mean_0)
    assert _violates(mean_b, se_b, g_dft[0])  # power: without the (1 - beta) factor it fails


def test_sampler_matches_tempered_softmax():
    """Draw frequencies == softmax(z / tau), checked per token at 5 sigma (binomial)."""
    tau, n, k = 0.7, 4000, 8
    base, _, logits, labels = _replicated(n)
    out, _ = _run("otr", logits, labels, k=k, tau=tau)
    draws = out.draws.view(3, n * k)
    counts = torch.stack([torch.bincount(d, minlength=base.shape[-1]) for d in draws]).double()
    expected = torch.softmax(base[0] / tau, -1)
    freq = counts / (n * k)
    # draws within a row are iid, so the binomial standard error is exact
    se = (expected * (1 - expected) / (n * k)).sqrt()
    assert bool(((freq - expected).abs() <= 5 * se + 1e-12).all())
    assert bool(((freq - torch.softmax(base[0], -1)).abs() > 5 * se).any())  # power: tau matters


# ------------------------------------------------------------------------------------------------------
# Masking, chunking, tiling, dtypes, reproducibility
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_ignored_positions_get_zero_gradient(name):
    logits, labels = _batch(seed=8)
    _, grad = _run(name, logits, labels)
    ignored = labels == O.IGNORE_INDEX
    assert bool((grad[ignored] == 0).all())
    assert bool((grad[~ignored].abs().sum(-1) > 0).all())


@pytest.mark.parametrize("name", ALL)
def test_no_response_token_gives_finite_zero(name):
    logits, labels = _batch(seed=9)
    labels[:] = O.IGNORE_INDEX
    out, grad = _run(name, logits, labels)
    assert out.num_tokens == 0 and out.loss.item() == 0.0 and torch.isfinite(out.loss)
    assert bool((grad == 0).all())
    assert all(v == 0.0 for v in out.metrics.values())
    hidden = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, 4, dtype=torch.float64, requires_grad=True)
    out = O.compute_from_hidden(name, hidden, weight, labels, generator=_gen(), **PARAMS[name])
    out.loss.backward()
    assert out.loss.item() == 0.0 and bool((hidden.grad == 0).all()) and bool((weight.grad == 0).all())


@pytest.mark.parametrize("name", ALL)
def test_chunked_equals_unchunked(name):
    logits, labels = _batch(b=4, t=6, seed=10)
    full, g_full = _run(name, logits, labels, chunk_size=10_000)
    for chunk in (1, 3, 7):
        out, g = _run(name, logits, labels, chunk_size=chunk)
        torch.testing.assert_close(out.loss, full.loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, g_full, rtol=1e-12, atol=1e-12)
        assert out.metrics == pytest.approx(full.metrics, rel=1e-12)
        if full.draws is not None:
            assert torch.equal(out.draws, full.draws)


@pytest.mark.parametrize("name", ALL)
def test_row_pieces_equal_one_piece(name, monkeypatch):
    """Objectives that walk a chunk in cache-sized row pieces (otr_exact at tau != 1, the row dots) give
    the same result with pieces of 1 or 2 rows as with the whole chunk in one piece."""
    logits, labels = _batch(b=4, t=6, seed=11)
    whole, g_whole = _run(name, logits, labels)
    for rows in (1, 2):
        monkeypatch.setattr(losses, "_ROWDOT_ELEMS", rows * V)
        out, g = _run(name, logits, labels)
        torch.testing.assert_close(out.loss, whole.loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, g_whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_from_hidden_equals_logits(name):
    g = _gen(14)
    b, t, h = 3, 5, 6
    hidden = torch.randn(b, t, h, generator=g, dtype=torch.float64)
    weight = torch.randn(V, h, generator=g, dtype=torch.float64)
    bias = torch.randn(V, generator=g, dtype=torch.float64)
    _, labels = _batch(b, t, seed=14)
    leaves = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
    ref = O.compute(name, F.linear(*leaves), labels, generator=_gen(), return_draws=True, **PARAMS[name])
    ref.loss.backward()
    tiles = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
    out = O.compute_from_hidden(
        name, tiles[0], tiles[1], labels, bias=tiles[2], chunk_size=4, generator=_gen(), return_draws=True,
        **PARAMS[name],
    )  # fmt: skip
    out.loss.backward()
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-12, atol=1e-12)
    for a, r in zip(tiles, leaves, strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-10, atol=1e-12)
    assert out.metrics == pytest.approx(ref.metrics, rel=1e-12)
    if O.is_sampled(name):
        assert torch.equal(out.draws, ref.draws)


@pytest.mark.parametrize("name", ALL)
def test_bf16_finite_and_close_to_fp32(name):
    logits, labels = _batch(b=4, t=8, v=64, dtype=torch.float32, seed=15)
    logits = logits.to(torch.bfloat16).float()  # same values in both dtypes: only the arithmetic differs
    o32, g32 = _run(name, logits, labels)
    o16, g16 = _run(name, logits.to(torch.bfloat16), labels)
    assert g16.dtype == torch.bfloat16 and torch.isfinite(o16.loss) and bool(torch.isfinite(g16).all())
    torch.testing.assert_close(o16.loss, o32.loss, rtol=1e-5, atol=1e-5)  # loss is computed in fp32
    torch.testing.assert_close(g16.float(), g32, rtol=1e-2, atol=2e-3)  # bf16 rounding of the gradient
    # the tiled path with a bf16 head
    g = _gen(15)
    hidden = torch.randn(4, 8, 16, generator=g).to(torch.bfloat16)
    weight = torch.randn(64, 16, generator=g).to(torch.bfloat16)
    outs = []
    for dt in (torch.float32, torch.bfloat16):
        h, w = hidden.to(dt).requires_grad_(True), weight.to(dt).requires_grad_(True)
        out = O.compute_from_hidden(name, h, w, labels, chunk_size=5, generator=_gen(), **PARAMS[name])
        out.loss.backward()
        outs.append((out.loss, h.grad.float(), w.grad.float(), out.metrics))
    assert all(bool(torch.isfinite(x).all()) for x in outs[1][:3])
    assert outs[1][3]["p_gt"] == pytest.approx(outs[0][3]["p_gt"], rel=2e-2)
    if O.is_sampled(name):
        return  # bf16-rounded logits move the CDF, so some draws differ: values are not comparable
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=2e-2, atol=2e-2)
    for a, r in zip(outs[1][1:3], outs[0][1:3], strict=True):
        torch.testing.assert_close(a, r, rtol=5e-2, atol=5e-2 * r.abs().max().item())


@pytest.mark.parametrize("name", ["otr", "unlikelihood"])
def test_same_seed_same_loss_other_seed_other_draws(name):
    logits, labels = _batch(b=4, t=8, dtype=torch.float32, seed=16)
    a, ga = _run(name, logits, labels, seed=1)
    b, gb = _run(name, logits, labels, seed=1)
    c, _ = _run(name, logits, labels, seed=2)
    assert torch.equal(a.loss, b.loss) and torch.equal(ga, gb) and torch.equal(a.draws, b.draws)
    assert not torch.equal(a.draws, c.draws) and a.loss.item() != c.loss.item()


def test_non_contiguous_logits_and_loss_scaling():
    logits, labels = _batch(b=2, t=7, seed=17)
    wide = torch.randn(2, 8, V, dtype=torch.float64)
    wide[:, :-1] = logits
    a = wide.clone().requires_grad_(True)
    out = O.compute("otr_exact", a[:, :-1], labels, **PARAMS["otr_exact"])  # a slice, as after a causal shift
    (out.loss / 3).backward()
    ref, g_ref = _run("otr_exact", logits, labels)
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(a.grad[:, :-1], g_ref / 3)
    assert bool((a.grad[:, -1] == 0).all())


def test_no_grad_mode():
    logits, labels = _batch(seed=18)
    with torch.no_grad():
        out = O.compute("otr", logits.requires_grad_(True), labels, generator=_gen(), **PARAMS["otr"])
    ref, _ = _run("otr", logits.detach(), labels)
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss, ref.loss)


# ------------------------------------------------------------------------------------------------------
# Metrics, registry, validation
# ------------------------------------------------------------------------------------------------------
def test_metrics_definitions_and_merging():
    logits, labels = _batch(b=4, t=9, seed=19)
    out, _ = _run("otr", logits, labels, k=5)
    mask = labels != -100
    z, x = logits[mask], labels[mask]
    p = torch.softmax(z, -1)
    p_x = p.gather(1, x[:, None]).squeeze(1)
    assert out.metrics["token_acc"] == pytest.approx((z.argmax(-1) == x).double().mean().item())
    assert out.metrics["p_gt"] == pytest.approx(p_x.mean().item())
    assert out.metrics["nll"] == pytest.approx(-p_x.log().mean().item())
    assert out.metrics["entropy"] == pytest.approx(-(p * p.log()).sum(-1).mean().item())
    hits = (out.draws == x[:, None]).double()
    assert out.metrics["draw_hit_rate"] == pytest.approx(hits.mean().item())
    assert out.metrics["no_hit_frac"] == pytest.approx((hits.sum(1) == 0).double().mean().item())
    assert set(_run("sft", logits, labels)[0].metrics) == set(O.METRICS)
    half = labels.clone()
    half[:2] = -100
    rest = labels.clone()
    rest[2:] = -100
    parts = [_run("sft", logits, lb)[0] for lb in (half, rest)]
    whole = _run("sft", logits, labels)[0]
    assert O.merge_metrics(parts) == pytest.approx(whole.metrics)


def test_registry():
    assert ALL == ["dft", "entropy_sft", "label_smoothing", "otr", "otr_exact", "sft", "unlikelihood"]
    assert [n for n in ALL if O.is_sampled(n)] == ["otr", "unlikelihood"]
    assert O.samples_per_token("otr") == 256 and O.samples_per_token("otr", {"K": 16}) == 16
    assert O.samples_per_token("unlikelihood") == 16 and O.samples_per_token("sft") == 0
    d = O.validate_params("otr", {})
    assert (d.k, d.tau, d.beta) == (256, 1.2, -0.1)
    assert O.validate_params("entropy_sft", {}).lam == 0.01
    assert O.validate_params("entropy_sft", {"lambda": 0.5}).lam == 0.5
    assert O.validate_params("label_smoothing", {}).eps == 0.1
    assert O.validate_params("unlikelihood", {}).alpha == 1.0


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("ot", {}, "unknown objective 'ot'; valid: asft, dft, entropy_sft, "),
        ("otr", {"k": 0}, "objective 'otr': k must be >= 1 (got 0)"),
        ("otr", {"tau": 0.0}, "objective 'otr': tau must be > 0.0 (got 0.0)"),
        ("otr", {"beta": 1.0}, "objective 'otr': beta must be < 1.0 (got 1.0)"),
        ("otr", {"k": 2.5}, "objective 'otr': k: input should be a valid integer"),
        ("otr", {"kk": 3}, "objective 'otr': unknown parameter 'kk'; valid: beta, k, tau"),
        ("otr_exact", {"k": 3}, "objective 'otr_exact': unknown parameter 'k'; valid: beta, tau"),
        ("sft", {"eps": 0.1}, "objective 'sft': unknown parameter 'eps'; valid: (none)"),
        ("label_smoothing", {"eps": 1.0}, "objective 'label_smoothing': eps must be < 1.0 (got 1.0)"),
        ("unlikelihood", {"alpha": -1}, "objective 'unlikelihood': alpha must be >= 0.0 (got -1)"),
        ("entropy_sft", {"lambda": -0.1}, "objective 'entropy_sft': lambda must be >= 0.0 (got -0.1)"),
        ("otr", {"tau": float("nan")}, "objective 'otr': tau: input should be a finite number"),
    ],
)
def test_validation_messages(name, params, message):
    with pytest.raises(ValueError) as info:
        O.validate_params(name, params)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text
    logits, labels = _batch()
    with pytest.raises(ValueError, match="objective|unknown"):
        O.compute(name, logits, labels, **params)


def test_bad_inputs():
    logits, labels = _batch()
    with pytest.raises(ValueError, match="do not align"):
        O.compute("sft", logits, labels[:, :-1])
    bad = labels.clone()
    bad[1, 1] = V
    with pytest.raises(ValueError, match="labels must be in"):
        O.compute("sft", logits, bad)
    with pytest.raises(ValueError, match="chunk_size"):
        O.compute("sft", logits, labels, chunk_size=0)
