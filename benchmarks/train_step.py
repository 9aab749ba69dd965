"""Real optimizer steps at V = 151,936: peak memory and step time of each training path, as ratios to TRL.

Variants (each in its own process, so each peak is its own; all through a transformers ``Trainer`` loop
with the same optimizer (transformers' and TRL's default, ``adamw_torch_fused``), batch, constant lr,
grad clipping 1.0, no gradient checkpointing, no logging or saving):

* ``hf``: plain ``Trainer``, the model's own loss (``labels`` -> the model's cross-entropy on its logits);
* ``trl nll`` / ``trl dft``: TRL's ``SFTTrainer`` (``loss_type``), its fused LM head (chunked log-probs);
* ``ours <objective> <path>``: the harness's ``ObjectiveTrainer`` (what ``otr-harness train`` runs) for
  sft, dft, otr K=16, otr K=256 and otr_exact, on the ``fused`` path (default) and the ``logits`` path;
* ``trl+mixin otr K=256``: TRL's ``SFTTrainer`` with ``harness.training.FusedObjectiveMixin``.

Model: a random Llama (``--model small``: 2 layers, hidden 256, untied head; ``--model qwen0.5b``: the
Qwen2.5-0.5B shapes, 24 layers, hidden 896, tied, 494M parameters), V = 151,936 (Qwen's vocabulary), built
from a config (no download). Data: ``--batch`` rows of exactly T tokens (no padding), the first quarter
of each row a masked prompt. Steps: ``--warmup`` unmeasured, then ``--steps`` measured; the step time
is the median wall time of an optimizer step (callback from step begin to step end; CUDA synchronised),
``cpu s`` the median process CPU time of a step (all threads; on a shared machine less disturbed by the
other processes than wall time).

Peak memory: on CPU the process's peak resident set size (``ru_maxrss``, whole process: weights, AdamW
state, imports included; ``Δ train`` = peak minus the RSS when training began); on CUDA
``torch.cuda.max_memory_allocated`` (tensors only). Ratios are to ``trl nll`` at the same T, measured in
the same invocation.

    python benchmarks/train_step.py                           # CPU: T in {512, 2048}, 1 + 3 steps
    python benchmarks/train_step.py --seq 2048 --only "trl nll" "ours otr K=256 fused"
    python benchmarks/train_step.py --device cuda --model qwen0.5b --seq 2048 --warmup 2 --steps 5
    python benchmarks/train_step.py --tiny                    # a seconds-long smoke run (V = 1024)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
V_QWEN = 151_936
REFERENCE = "trl nll"
OURS = [("sft", {}), ("dft", {}), ("otr K=16", {"k": 16}), ("otr K=256", {"k": 256}), ("otr_exact", {})]


def variants() -> dict[str, dict]:
    """name -> how to run it (kind, objective, params, path)."""
    out = {"hf": {"kind": "hf"}}
    out["trl nll"] = {"kind": "trl", "loss_type": "nll"}
    out["trl dft"] = {"kind": "trl", "loss_type": "dft"}
    for path in ("fused", "logits"):
        for label, params in OURS:
            name = label.split()[0]
            otr = {"tau": 1.2, "beta": -0.1} if name.startswith("otr") else {}
            out[f"ours {label} {path}"] = {
                "kind": "ours",
                "objective": name,
                "params": {**otr, **params},
                "path": path,
            }
    out["trl+mixin otr K=256"] = {
        "kind": "mixin",
        "objective": "otr",
        "params": {"k": 256, "tau": 1.2, "beta": -0.1},
    }
    return out


# ======================================================================================================
# Child: one variant, one process
# ======================================================================================================
def model_config(kind: str, vocab: int):
    from transformers import LlamaConfig, Qwen2Config

    if kind == "qwen0.5b":  # Qwen2.5-0.5B's shapes
        return Qwen2Config(
            vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
            max_position_embeddings=32768,
        )  # fmt: skip
    return LlamaConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, tie_word_embeddings=False, max_position_embeddings=4096,
    )  # fmt: skip


def rows(n: int, seq: int, vocab: int) -> list[dict[str, list[int]]]:
    """``n`` examples of ``seq`` tokens, the first quarter a masked prompt (labels -100)."""
    import torch

    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (seq,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (seq // 4) + ids[seq // 4 :]})
    return out


def tiny_tokenizer():
    """A placeholder tokenizer (pad 0, eos 1): the data are token ids already; TRL wants a processing class."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_child(a: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    sys.path.insert(0, ROOT)
    spec = variants()[a.child]
    seq = a.seq[0]  # a child runs one T
    cuda = a.device == "cuda"
    vocab = 1024 if a.tiny else V_QWEN
    torch.manual_seed(0)
    with torch.device(a.device):  # a 0.5B model initialises in seconds on the GPU, not on its CPU
        model = AutoModelForCausalLM.from_config(model_config(a.model, vocab)).train()
    data = rows(a.batch * (a.warmup + a.steps), seq, vocab)
    times: list[tuple[float, float]] = []
    start_rss: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            start_rss.append(rss_mb())

        def on_step_begin(self, *args, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *args, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - self.t0, time.process_time() - self.c0))

    common = dict(
        output_dir=tempfile.mkdtemp(prefix="train-step-"), max_steps=a.warmup + a.steps,
        per_device_train_batch_size=a.batch, learning_rate=1e-5, lr_scheduler_type="constant",
        max_grad_norm=1.0, logging_steps=10**6, save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=not cuda, bf16=a.bf16, gradient_checkpointing=False, seed=0,
        dataloader_num_workers=0, dataloader_pin_memory=False,
    )  # fmt: skip
    kind = spec["kind"]
    if kind in ("trl", "mixin"):
        import datasets
        import trl

        dataset = datasets.Dataset.from_list(data)
        args = trl.SFTConfig(**common, max_length=None, loss_type=spec.get("loss_type", "nll"))
        if kind == "trl":
            trainer = trl.SFTTrainer(
                model=model, args=args, train_dataset=dataset, processing_class=tiny_tokenizer()
            )
        else:
            from harness.training import FusedObjectiveMixin

            class MixinTrainer(FusedObjectiveMixin, trl.SFTTrainer):
                pass

            trainer = MixinTrainer(
                model=model, args=args, train_dataset=dataset, processing_class=tiny_tokenizer(),
                objective=spec["objective"], objective_params=spec["params"],
            )  # fmt: skip
    elif kind == "hf":
        from transformers import default_data_collator

        batches = [{**r, "attention_mask": [1] * seq} for r in data]
        trainer = Trainer(
            model=model, args=TrainingArguments(**common, remove_unused_columns=False), train_dataset=batches,
            data_collator=default_data_collator,
        )  # fmt: skip
    else:
        from harness.training.data import Collator
        from harness.training.trainer import ObjectiveTrainer

        trainer = ObjectiveTrainer(
            model=model, args=TrainingArguments(**common, remove_unused_columns=False), train_dataset=data,
            data_collator=Collator(0), objective_name=spec["objective"], objective_params=spec["params"],
            run_seed=0, training_path=spec["path"],
        )  # fmt: skip
    trainer.add_callback(Clock())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    measured = times[a.warmup :]
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "variant": a.child, "seq": seq, "peak_mb": peak,
        "train_mb": None if cuda else peak - start_rss[0],
        "step_s": statistics.median(t for t, _ in measured), "cpu_s": statistics.median(c for _, c in measured),
        "steps": len(measured), "params": sum(p.numel() for p in model.parameters()),
    }  # fmt: skip


# ======================================================================================================
# Parent: every (T, variant) in its own process, then the table and the targets
# ======================================================================================================
def child_argv(a: argparse.Namespace, name: str, seq: int) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--child", name, "--seq", str(seq)]
    argv += ["--batch", str(a.batch), "--warmup", str(a.warmup), "--steps", str(a.steps), "--model", a.model]
    argv += ["--device", a.device, "--threads", str(a.threads)] + ["--bf16"] * a.bf16 + ["--tiny"] * a.tiny
    return argv


def table(results: list[dict], device: str) -> list[str]:
    mem = "peak MiB (max_memory_allocated)" if device == "cuda" else "peak RSS MiB"
    lines = [
        f"| T | variant | {mem} | / trl nll | Δ train MiB | step s | / trl nll | cpu s |",
        "|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        ref = next((x for x in results if x["seq"] == r["seq"] and x["variant"] == REFERENCE), None)
        pr = f"{r['peak_mb'] / ref['peak_mb']:.2f}" if ref else "-"
        tr = f"{r['step_s'] / ref['step_s']:.2f}" if ref else "-"
        dt = "-" if r["train_mb"] is None else f"{r['train_mb']:.0f}"
        lines.append(
            f"| {r['seq']} | {r['variant']} | {r['peak_mb']:.0f} | {pr} | {dt} | {r['step_s']:.2f} | {tr} | {r['cpu_s']:.2f} |"
        )
    return lines


def targets(results: list[dict]) -> list[str]:
    """The issue's targets, judged on the fused (default) path of every objective: met or missed by how much."""
    out = []
    by = {(r["seq"], r["variant"]): r for r in results}
    for seq in sorted({r["seq"] for r in results}):
        ref = by.get((seq, REFERENCE))
        ours = [r for r in results if r["seq"] == seq and r["variant"].endswith(" fused")]
        if ref is None or not ours:
            continue
        worst_mem = max(ours, key=lambda r: r["peak_mb"])
        worst_time = max(ours, key=lambda r: r["step_s"])
        m, t = worst_mem["peak_mb"] / ref["peak_mb"], worst_time["step_s"] / ref["step_s"]
        out.append(
            f"T={seq}: peak <= 0.7x trl nll: {'met' if m <= 0.7 else 'MISSED'} (worst {worst_mem['variant']}: {m:.2f}x)"
        )
        out.append(
            f"T={seq}: step <= 1.0x trl nll: {'met' if t <= 1.0 else 'MISSED'} (worst {worst_time['variant']}: {t:.2f}x)"
        )
        k16, k256 = by.get((seq, "ours otr K=16 fused")), by.get((seq, "ours otr K=256 fused"))
        if k16 and k256:
            d = k256["peak_mb"] / k16["peak_mb"] - 1
            out.append(
                f"T={seq}: peak flat in K (K=256 vs 16 within 2%): {'met' if abs(d) <= 0.02 else 'MISSED'} ({d:+.1%})"
            )
    seqs = sorted({r["seq"] for r in results})
    if len(seqs) >= 2:
        lo, hi = seqs[0], seqs[-1]
        if (lo, REFERENCE) in by and (hi, REFERENCE) in by:
            trl_growth = by[(hi, REFERENCE)]["peak_mb"] - by[(lo, REFERENCE)]["peak_mb"]
            for r in results:
                if r["seq"] == hi and r["variant"].endswith(" fused") and (lo, r["variant"]) in by:
                    g = r["peak_mb"] - by[(lo, r["variant"])]["peak_mb"]
                    ok = g <= max(trl_growth, 0) + 0.02 * by[(lo, r["variant"])]["peak_mb"]
                    out.append(
                        f"peak growth T={lo}->{hi} no faster than trl nll's ({trl_growth:+.0f} MiB): "
                        f"{r['variant']} {g:+.0f} MiB {'met' if ok else 'MISSED'}"
                    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, nargs="+", default=[512, 2048], help="tokens per row (T)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="measured optimizer steps")
    p.add_argument("--model", choices=["small", "qwen0.5b"], default="small")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (TrainingArguments.bf16)")
    p.add_argument("--tiny", action="store_true", help="V = 1024: a smoke run of the script itself")
    p.add_argument("--only", nargs="+", help="variant names (default: all); 'trl nll' is always run")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(run_child(a)), flush=True)
        return 0
    names = list(variants())
    if a.only:
        unknown = sorted(set(a.only) - set(names))
        if unknown:
            p.error(f"unknown variant {unknown[0]!r}; valid: {', '.join(names)}")
        names = [n for n in names if n in a.only or n == REFERENCE]
    results, failed = [], []
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for seq in a.seq:
        for name in names:
            t0 = time.perf_counter()
            proc = subprocess.run(child_argv(a, name, seq), capture_output=True, text=True, env=env, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                failed.append(f"T={seq} {name}: exit {proc.returncode}: {proc.stderr.strip()[-1500:]}")
                print(f"FAILED T={seq} {name}", file=sys.stderr, flush=True)
                continue
            results.append(json.loads(line[len("RESULT ") :]))
            r = results[-1]
            print(f"T={seq} {name}: peak {r['peak_mb']:.0f} MiB, step {r['step_s']:.2f} s ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    print(f"\n{a.device}, model {a.model} ({results[0]['params'] / 1e6:.1f}M parameters), batch {a.batch} x T, "
          f"{a.warmup} warm-up + {a.steps} measured steps, {a.threads} threads, bf16={a.bf16}\n" if results else "")  # fmt: skip
    print("\n".join(table(results, a.device)))
    print("\n" + "\n".join(targets(results)))
    for f in failed:
        print("\nFAILED " + f)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": results, "failed": failed}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
