"""Fused == logits on a real device and precision: every objective, loss and gradients, three families.

For each model family (Llama with an untied head, Qwen2 with tied embeddings, Gemma 2 with final logit
soft-capping), each objective (``harness.objectives.available()``) and each precision:

* ``fp32``: fp32 weights, no autocast -- fused and logits must agree to float32 noise;
* ``bf16``: bf16 weights (``model_dtype: bfloat16``);
* ``autocast``: fp32 weights under ``torch.autocast(bfloat16)`` (``training.bf16: true``);

the loss and every parameter's gradient of the fused path and of the logits path are compared with each
other and with an fp64 logits-path reference on the same weights. In bf16 the two paths round
differently, so "equal" means: the fused path is as close to the fp64 reference as the logits path is
(error <= 1.5x the logits path's + a small floor) and the two agree to bf16 precision. Sampled objectives
use the same seeded generator on both paths (draws may differ where bf16 rounding moves a sample across a
CDF boundary, which moves OTR's K-sample gradient estimate; there the paths' gradient difference may be
as large as 1.5x the logits path's own error against fp64, not larger). In fp32 the sampled objectives
draw the same tokens on both paths and are held to the fp32 tolerance like the others.

    python benchmarks/fused_check.py                    # cuda if available: V = 151,936, 2 x 512 tokens
    python benchmarks/fused_check.py --device cpu --tiny   # a seconds-long CPU dry run (V = 1024)

Prints one line per case and exits 1 if any case fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import objectives as O  # noqa: E402
from harness.training import fused  # noqa: E402

PARAMS = {"otr": {"k": 16, "tau": 1.2, "beta": -0.1}, "otr_exact": {"tau": 1.2, "beta": -0.1}}
# (loss relative tolerance, gradient relative tolerance) between the two paths, per precision
TOL = {"fp32": (1e-4, 1e-3), "bf16": (2e-2, 5e-2), "autocast": (2e-2, 5e-2)}


def build(family: str, vocab: int, hidden: int, layers: int):
    import transformers as T

    common = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 64), num_key_value_heads=max(1, hidden // 128),
    )  # fmt: skip
    if family == "llama":
        cfg = T.LlamaConfig(**common, tie_word_embeddings=False)
    elif family == "qwen2":
        cfg = T.Qwen2Config(**common, tie_word_embeddings=True)
    else:
        cfg = T.Gemma2Config(**common, head_dim=64, final_logit_softcapping=30.0)
    cfg._attn_implementation = "eager" if family == "gemma2" else "sdpa"
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # logits far from uniform, so every objective's terms matter
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.05)
    return model.train()


def batch(vocab: int, rows: int, seq: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rows, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 4] = -100
    return {"input_ids": ids.to(device), "labels": labels.to(device)}


def run(model, b, name: str, path: str, device: str, autocast: bool):
    """(loss / tokens, metrics, {param: grad}) of one forward + backward on ``path``."""
    model.zero_grad(set_to_none=True)
    gen = torch.Generator(device=device).manual_seed(5)
    ctx = torch.autocast(device_type=device, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        if path == "fused":
            out = fused.fused_loss(model, b, name, gen, **PARAMS.get(name, {}))
        else:
            logits = model(input_ids=b["input_ids"], use_cache=False).logits
            out = O.compute(
                name, logits, fused.shift_labels(b["labels"]), generator=gen, **PARAMS.get(name, {})
            )
    (out.loss / out.num_tokens).backward()
    grads = {n: p.grad.detach().double().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(out.loss.detach()) / out.num_tokens, out.metrics, grads


def grad_err(a: dict, b: dict) -> float:
    num = sum(float((a[n] - b[n]).pow(2).sum()) for n in b)
    den = sum(float(b[n].pow(2).sum()) for n in b)
    return (num / max(den, 1e-300)) ** 0.5


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="V = 1024, hidden 64, 2 x 32 tokens (CPU dry run)")
    p.add_argument("--families", nargs="+", default=["llama", "qwen2", "gemma2"])
    p.add_argument("--precisions", nargs="+", default=list(TOL))
    a = p.parse_args(argv)
    vocab, hidden, layers, seq = (1024, 64, 2, 32) if a.tiny else (151_936, 512, 2, 512)
    failures = 0
    t0 = time.perf_counter()
    print(
        f"device {a.device} ({torch.cuda.get_device_name() if a.device == 'cuda' else 'cpu'}), V = {vocab}, 2 x {seq} tokens"
    )
    print(f"{'family':8} {'precision':9} {'objective':15} {'loss f-l':>9} {'grad f-l':>9} {'loss err f':>10} {'loss err l':>10} {'grad err f':>10} {'grad err l':>10}  ok")  # fmt: skip
    for family in a.families:
        base = build(family, vocab, hidden, layers)
        b = batch(vocab, 2, seq, a.device)
        ref_model = build(family, vocab, hidden, layers).double().to(a.device)
        fused.enable_fused_objective(base)
        for precision in a.precisions:
            model = (base.to(torch.bfloat16) if precision == "bf16" else base.float()).to(a.device)
            with torch.no_grad():  # the reference sees exactly these (possibly bf16-rounded) weights
                for (_, q), r in zip(model.named_parameters(), ref_model.parameters(), strict=True):
                    r.copy_(q.double())
            for name in O.available():
                ref = run(ref_model, b, name, "logits", a.device, False)
                fl = run(model, b, name, "fused", a.device, precision == "autocast")
                lg = run(model, b, name, "logits", a.device, precision == "autocast")
                scale = max(abs(ref[0]), 1e-3)
                d_loss, d_grad = abs(fl[0] - lg[0]) / scale, grad_err(fl[2], lg[2])
                e_fl, e_lg = abs(fl[0] - ref[0]) / scale, abs(lg[0] - ref[0]) / scale
                g_fl, g_lg = grad_err(fl[2], ref[2]), grad_err(lg[2], ref[2])
                tl, tg = TOL[precision]
                if O.is_sampled(name) and precision != "fp32":
                    # A few draws flip where bf16 moves a sample across a CDF boundary: the gradient is a
                    # K-sample estimate, so a flipped draw moves it by as much as precision itself does.
                    tg = max(tg, 1.5 * g_lg)
                ok = d_loss <= tl and d_grad <= tg and set(fl[2]) == set(lg[2]) == set(ref[2])
                if precision != "fp32":  # the fused path is not less accurate than the logits path
                    ok = ok and e_fl <= 1.5 * e_lg + tl / 4 and g_fl <= 1.5 * g_lg + tg / 4
                failures += not ok
                print(f"{family:8} {precision:9} {name:15} {d_loss:9.1e} {d_grad:9.1e} {e_fl:10.1e} {e_lg:10.1e} {g_fl:10.1e} {g_lg:10.1e}  {'ok' if ok else 'FAIL'}", flush=True)  # fmt: skip
        del base, ref_model, model
        if a.device == "cuda":
            torch.cuda.empty_cache()
    print(f"{failures} failure(s), {time.perf_counter() - t0:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
