"""Step time and peak memory of every objective relative to ``sft``, side by side in one process.

One small Llama-style model (random weights, untied LM head) and one fixed batch per vocabulary size.
A *step* is forward + objective + backward (``(loss / num_tokens).backward()``), no optimizer. Two ways
of reaching the objective are measured, each against its own ``sft``:

* ``logits``: ``model(...).logits`` -> ``harness.objectives.compute`` (the [B, T, V] logits exist);
  ``sft_torch`` is plain ``F.cross_entropy`` on the same logits, for reference.
* ``hidden``: ``model.model(...)`` hidden states -> ``compute_from_hidden`` with the LM head weight
  (logits only ever exist as one [chunk, V] tile).

Timing: the variants run round-robin (``--reps`` rounds after one warm-up round) so drift hits them all
alike; the table shows the median wall time and median process CPU time of a step and their ratios to
``sft`` on the same path. CPU runs default to ONE intra-op thread: on a shared 2-core machine, two OpenMP
threads plus other processes made even a tiny model's step 100x slower and the ratios meaningless.

Objective peak: the same measurement on the objective alone (``compute`` / ``compute_from_hidden`` and
its backward on detached model outputs), which shows what each objective itself adds.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the step minus what was allocated
before it. On CPU there is no allocator peak counter, so one extra step per variant runs under
``torch.profiler`` with ``profile_memory=True`` and the peak of the allocator's running
"Total Allocated" (bytes allocated by torch since the step began, net of frees) is taken. Both count
torch tensors only (not Python objects, not the allocator's cached-but-free memory) and exclude the
resident model; ``peak_total`` adds the bytes allocated before the step (weights, batch).

    python benchmarks/objectives.py            # full: V in {32k, 152k}, K in {1, 16, 256}
    python benchmarks/objectives.py --quick    # batch 1x256, 2 + 5 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import objectives as O  # noqa: E402


def build_model(vocab: int, hidden: int, layers: int, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device).float().train()


def make_batch(vocab, batch, seq, prompt_frac, device):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    labels = ids[:, 1:].clone()  # aligned with the logits of ids[:, :-1]
    labels[:, : int(seq * prompt_frac)] = O.IGNORE_INDEX  # the prompt
    return ids[:, :-1].to(device), labels.to(device)


CONTROL = "sft (control)"


def variants(ks):
    # CONTROL is sft measured a second time under its own name: its ratio to sft is the noise floor.
    out = [("sft", "sft", {}), (CONTROL, "sft", {}), ("dft", "dft", {}), ("otr_exact", "otr_exact", {})]
    out += [(f"otr K={k}", "otr", {"k": k}) for k in ks]
    out += [
        ("unlikelihood", "unlikelihood", {}),
        ("label_smoothing", "label_smoothing", {}),
        ("entropy_sft", "entropy_sft", {}),
    ]
    return out


def make_step(model, ids, labels, path, name, params, chunk_size, seed):
    head = model.lm_head
    n = int((labels != O.IGNORE_INDEX).sum())

    def step():  # the caller clears the grads first (outside the measured region)
        gen = torch.Generator(device=ids.device).manual_seed(seed)
        if path == "logits":
            logits = model(input_ids=ids).logits
            if name == "sft_torch":
                loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
            else:
                loss = O.compute(name, logits, labels, generator=gen, chunk_size=chunk_size, **params).loss
        else:
            hidden = model.model(input_ids=ids).last_hidden_state
            loss = O.compute_from_hidden(
                name, hidden, head.weight, labels, bias=head.bias, generator=gen, chunk_size=chunk_size,
                **params,
            ).loss  # fmt: skip
        (loss / n).backward()

    return step


def objective_only(model, ids, labels, path, name, params, chunk_size):
    """A step of the objective alone (plus its backward into the head), on detached model outputs."""
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        logits = model.lm_head(hidden) if path == "logits" else None
    weight = model.lm_head.weight.detach().clone().requires_grad_(True)
    leaf = (logits if path == "logits" else hidden).detach().requires_grad_(True)
    n = int((labels != O.IGNORE_INDEX).sum())

    def step():
        leaf.grad = weight.grad = None  # set, not accumulated: every call does the same work
        gen = torch.Generator(device=ids.device).manual_seed(0)
        if name == "sft_torch":
            loss = F.cross_entropy(leaf.flatten(0, 1), labels.flatten(), reduction="sum")
        elif path == "logits":
            loss = O.compute(name, leaf, labels, generator=gen, chunk_size=chunk_size, **params).loss
        else:
            out = O.compute_from_hidden(
                name, leaf, weight, labels, generator=gen, chunk_size=chunk_size, **params
            )
            loss = out.loss
        (loss / n).backward()

    return step


def peak_memory(step, device) -> int:
    """Peak bytes allocated during ``step`` above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    mem = [e["args"] for e in events if e.get("name") == "[memory]"]
    if not mem:
        return 0
    # the allocator's running total is not reset between profiler sessions: measure from this one's start
    start = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return max(m["Total Allocated"] for m in mem) - start


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(args, vocab, device, rows):
    model = build_model(vocab, args.hidden, args.layers, device)
    ids, labels = make_batch(vocab, args.batch, args.seq, args.prompt_frac, device)
    resident = sum(p.numel() * p.element_size() for p in model.parameters()) + 2 * ids.numel() * 8
    for path in args.paths:
        vs = variants(args.k)
        if path == "logits":
            vs.insert(1, ("sft_torch", "sft_torch", {}))
        if args.only:  # sft and its control are always kept: every ratio is relative to them
            vs = [v for v in vs if v[0] in ("sft", CONTROL) or v[1] in args.only]
        steps = {label: make_step(model, ids, labels, path, n, p, args.chunk_size, 0) for label, n, p in vs}
        times = {label: [] for label in steps}
        cpu = {label: [] for label in steps}
        # With one intra-op thread all of torch's work runs on this thread: its CPU time excludes the
        # time the OS gave to other processes, the main noise on a shared machine. Otherwise use the
        # process's CPU time (all threads).
        cpu_clock = time.thread_time if torch.get_num_threads() == 1 else time.process_time
        order = list(steps)
        for r in range(args.reps + 1):  # round 0 is the warm-up
            random.Random(r).shuffle(order)  # no variant always runs right after the same one
            for label in order:
                model.zero_grad(set_to_none=True)
                sync(device)
                t0, c0 = time.perf_counter(), cpu_clock()
                steps[label]()
                sync(device)
                if r > 0:
                    times[label].append(time.perf_counter() - t0)
                    cpu[label].append(cpu_clock() - c0)
            print(f"  V={vocab} {path}: round {r}/{args.reps} done", file=sys.stderr, flush=True)
        # The objective alone on detached model outputs, many more rounds (it is cheap on the logits
        # path): the model's forward/backward is the same for every objective, so a variant's extra step
        # time is its extra objective time. Paired per round: d = t(variant) - t(sft) of the same round.
        obj_steps = {
            label: objective_only(model, ids, labels, path, n, p, args.chunk_size) for label, n, p in vs
        }
        obj_cpu = {label: [] for label in obj_steps}
        order = list(obj_steps)
        for r in range(args.obj_reps + 1):
            random.Random(1000 + r).shuffle(order)
            for label in order:
                sync(device)
                c0 = cpu_clock()
                obj_steps[label]()
                sync(device)
                if r > 0:
                    obj_cpu[label].append(cpu_clock() - c0)
        print(f"  V={vocab} {path}: objective-only rounds done", file=sys.stderr, flush=True)
        del obj_steps
        mem, obj_mem = {}, {}
        if not args.no_memory:
            for label, step in steps.items():
                model.zero_grad(set_to_none=True)
                mem[label] = peak_memory(step, device)
            for label, n, p in vs:
                obj_mem[label] = peak_memory(
                    objective_only(model, ids, labels, path, n, p, args.chunk_size), device
                )
        for label in steps:
            # Ratios are paired by round (variant / sft of the same round, then the median over rounds):
            # slow drifts of the machine's speed cancel within a round.
            t_ratios = [a / b for a, b in zip(times[label], times["sft"], strict=True)]
            c_ratios = [a / b for a, b in zip(cpu[label], cpu["sft"], strict=True)]
            row = dict(vocab=vocab, path=path, variant=label, time_s=statistics.median(times[label]))
            row.update(time_ratio=statistics.median(t_ratios), cpu_s=statistics.median(cpu[label]))
            row.update(cpu_ratio=statistics.median(c_ratios), cpu_iqr=_quartiles(c_ratios))
            extra = statistics.median([a - b for a, b in zip(obj_cpu[label], obj_cpu["sft"], strict=True)])
            # step ratio implied by the objective's extra CPU time over SFT's whole step
            row.update(obj_cpu_s=statistics.median(obj_cpu[label]), extra_ms=1e3 * extra)
            row.update(derived_ratio=1 + extra / statistics.median(cpu["sft"]))
            if mem:
                row.update(
                    peak_mib=mem[label] / 2**20,
                    mem_ratio=mem[label] / mem["sft"],
                    total_ratio=(mem[label] + resident) / (mem["sft"] + resident),
                    obj_mib=obj_mem[label] / 2**20,
                    obj_ratio=obj_mem[label] / obj_mem["sft"],
                )
            rows.append(row)
        model.zero_grad(set_to_none=True)
    del model


def _quartiles(xs: list[float]) -> tuple[float, float]:
    """(25th, 75th) percentile of the per-round ratios: how much a single round's ratio scatters."""
    if len(xs) < 2:
        return (xs[0], xs[0])
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return (q[0], q[2])


def markdown(rows) -> str:
    has_mem = "peak_mib" in rows[0]
    head = (
        "| V | path | objective | wall s | wall / sft | cpu s | cpu / sft | cpu / sft IQR "
        "| objective cpu s | extra ms | derived / sft |"
    )
    sep = "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|"
    if has_mem:
        head += " step peak MiB | / sft | objective peak MiB | / sft |"
        sep += "---:|---:|---:|---:|"
    lines = [head, sep]
    for r in rows:
        line = (
            f"| {r['vocab']} | {r['path']} | {r['variant']} | {r['time_s']:.2f} | {r['time_ratio']:.3f} "
            f"| {r['cpu_s']:.2f} | {r['cpu_ratio']:.3f} | {r['cpu_iqr'][0]:.3f}-{r['cpu_iqr'][1]:.3f} "
            f"| {r['obj_cpu_s']:.3f} | {r['extra_ms']:+.1f} | {r['derived_ratio']:.3f} |"
        )
        if has_mem:
            line += (
                f" {r['peak_mib']:.0f} | {r['mem_ratio']:.3f} | {r['obj_mib']:.0f} | {r['obj_ratio']:.3f} |"
            )
        lines.append(line)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[32000, 152064])
    ap.add_argument("--k", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--paths", nargs="+", default=["logits", "hidden"], choices=["logits", "hidden"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--prompt-frac", type=float, default=0.25, help="leading positions masked as prompt")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="rounds of whole steps (after one warm-up)")
    ap.add_argument(
        "--obj-reps", type=int, default=30, help="rounds of the objective alone (cheap; the precise part)"
    )
    ap.add_argument("--only", nargs="+", help="objective names to measure (sft is always included)")
    ap.add_argument("--chunk-size", type=int, default=None, help="positions per block (default: auto)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--quick", action="store_true", help="batch 1x256, 2 repeats")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.reps, args.obj_reps = 1, 256, 2, 5
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"# device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"batch={args.batch}x{args.seq} prompt_frac={args.prompt_frac} hidden={args.hidden} "
        f"layers={args.layers} reps={args.reps} chunk={args.chunk_size or 'auto'}",
        flush=True,
    )
    rows = []
    for vocab in args.vocab:
        bench(args, vocab, device, rows)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
