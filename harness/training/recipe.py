"""The fine-tuning recipe: RunConfig in, fine-tuned checkpoint + metrics log + compute summary out.

Reads top to bottom: seed -> tokenizer -> data (validated before any model is loaded) -> model (+ LoRA
adapters) -> Trainer with the chosen objective -> train (resuming from the last complete checkpoint if
there is one) -> save the final model atomically -> summary.

The objective is plugged into transformers' ``Trainer.compute_loss``; the Trainer never knows which
objective runs, and the objectives never know about the Trainer. Normalisation happens here, once, for
every objective: the objective returns the SUM of its per-token losses, and we divide by the number of
response tokens in the whole optimizer step (all gradient-accumulation micro-batches, all processes),
which transformers counts for us as ``num_items_in_batch``.

``loss_normalization: sequences`` instead weights every sequence equally: each sequence's summed loss is
divided by its own response tokens, and the sum of those per-sequence means is divided by the number of
sequences of the whole optimizer step that have at least one response token (again all micro-batches,
all processes). ``_get_num_items_in_batch`` counts those sequences in place of tokens, with transformers'
own cross-device reduction, so the two modes differ only in what is counted and in the numerator.

Checkpoints: ``training: {save_strategy: steps, save_steps: N, save_total_limit: M}`` (TrainingArguments
names) keeps the last M checkpoints in ``train/checkpoint-*``; a re-run resumes from the last one with the
same data order, optimizer/scheduler/RNG state and OTR draws (seeded by step), so its losses equal an
uninterrupted run's. A checkpoint counts as complete once ``harness_counters.json`` is in it (written
after transformers has written everything else); a torn one left by a kill mid-save is skipped and removed.
``report_to`` passes through too (e.g. ``report_to: tensorboard`` writes event files under
``train/runs/<date>_<host>/``, offline, with the ``tensorboard`` package installed — the ``dev`` extra has
it; the default is ``none``). ``train/metrics.jsonl`` is written either way.

Multi-process (``launcher:``, run under ``accelerate launch``): every process trains on its shard of each
global batch; the loss denominator counts the response tokens of all processes (transformers' gather),
the logged diagnostics and token counters are summed over processes, and only the main process (rank 0)
writes to the run directory (metrics, checkpoints' counters, final model, summary). ``train()`` returns the
summary on rank 0 and ``None`` elsewhere.

LoRA (``lora:``): only the adapters train and are checkpointed; at the end the adapter is saved to
``train/adapter/`` and merged into a fresh copy of the base for ``train/final/``, a plain HF model
directory (lm-eval's ``hf`` backend and vLLM load it without peft).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from harness import objectives
from harness.config import ConfigError, RunConfig
from harness.runs.io import atomic_write_json, atomic_write_text, read_jsonl
from harness.runs.layout import RunDir
from harness.toy import resolve as resolve_ref
from harness.training.data import IGNORE_INDEX, Collator, PackingCollator, build_dataset

log = logging.getLogger(__name__)


def micro_batch_seed(run_seed: int, step: int, micro: int, rank: int) -> int:
    """Seed of the sampling generator of one micro-batch: a pure function of (run seed, optimizer step,
    micro-batch index within the step, process rank), so a resumed run redraws exactly what it would have."""
    key = f"{run_seed}/{step}/{micro}/{rank}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def peak_memory_mb() -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, else the peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class ObjectiveTrainer(Trainer):
    """A ``Trainer`` whose loss is a token-level objective from ``harness.objectives``."""

    # We normalise by the global token count ourselves, so the Trainer must not divide by the number of
    # accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        objective_name: str,
        objective_params: dict[str, Any],
        run_seed: int,
        loss_normalization: str = "tokens",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if loss_normalization not in ("tokens", "sequences"):
            raise ValueError(
                f"loss_normalization must be 'tokens' or 'sequences', got {loss_normalization!r}"
            )
        self.loss_normalization = loss_normalization
        self.objective_name = objective_name
        self.objective_params = objective_params
        self.run_seed = run_seed
        # Make the Trainer count the response tokens of the whole accumulated batch (it does so only for
        # models that take loss kwargs); our collator provides `shift_labels`, which it counts as they are.
        self.model_accepts_loss_kwargs = True
        self._micro_step = (-1, 0)  # (global_step, index of the micro-batch within it)
        # This process's token-weighted diagnostic sums and counters since the last sync_counters().
        self._pending: dict[str, float] = defaultdict(float)
        # All processes' sums since the last log step (filled by sync_counters, emptied by log).
        self._diag: dict[str, float] = defaultdict(float)
        self.tokens_seen = 0  # all processes, whole run (restored on resume)
        self.sampled_tokens = 0

    def _generator(self, device: torch.device) -> torch.Generator:
        """A generator seeded from (run seed, step, micro-batch, rank): same run -> same draws, also on resume."""
        step, micro = self._micro_step
        micro = micro + 1 if step == self.state.global_step else 0
        self._micro_step = (self.state.global_step, micro)
        seed = micro_batch_seed(self.run_seed, self.state.global_step, micro, self.args.process_index)
        return torch.Generator(device=device).manual_seed(seed)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """The denominator of the step: response tokens (default) or sequences with a response token.

        For ``sequences`` we hand transformers' counter one stand-in label per sequence (0 if the sequence
        has a response token, else -100), so the count and its cross-device reduction stay transformers'.
        """
        if self.loss_normalization == "sequences" and batch_samples and "shift_labels" in batch_samples[0]:
            batch_samples = [
                {"labels": s, "shift_labels": s}
                for s in (
                    torch.where((b["shift_labels"] != IGNORE_INDEX).any(-1), 0, IGNORE_INDEX)
                    for b in batch_samples
                )
            ]
        return super()._get_num_items_in_batch(batch_samples, device)

    def _objective(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, objectives.ObjectiveOutput]:
        """The numerator of the loss, and the objective's output (for its token-weighted diagnostics)."""
        generator = self._generator(logits.device)
        if self.loss_normalization == "tokens":
            out = objectives.compute(
                self.objective_name, logits, labels, generator=generator, **self.objective_params
            )
            return out.loss, out
        # sequences: the objective per sequence (one call per row, same generator in row order), each
        # row's sum divided by its own response tokens; rows without response tokens contribute nothing.
        rows = [
            objectives.compute(
                self.objective_name, logits[i], labels[i], generator=generator, **self.objective_params
            )
            for i in range(labels.shape[0])
        ]
        numerator = sum(r.loss / r.num_tokens for r in rows if r.num_tokens > 0)
        if not torch.is_tensor(numerator):  # no response token in this micro-batch
            numerator = logits.sum() * 0.0
        merged = objectives.ObjectiveOutput(
            loss=sum(r.loss.detach() for r in rows),
            num_tokens=sum(r.num_tokens for r in rows),
            metrics=objectives.merge_metrics(rows),
        )
        return numerator, merged

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("shift_labels")
        inputs.pop("labels", None)  # we compute the loss; the model must not
        # No KV cache in training; transformers also reads packed examples' boundaries from position_ids
        # only when there is no cache (and no attention mask).
        outputs = model(**inputs, use_cache=False)
        numerator, out = self._objective(outputs.logits, labels)
        if num_items_in_batch is None:  # e.g. a lone evaluation batch: normalise by its own items
            num_items_in_batch = (
                out.num_tokens
                if self.loss_normalization == "tokens"
                else int((labels != IGNORE_INDEX).any(-1).sum())
            )
        denom = torch.as_tensor(num_items_in_batch, device=numerator.device, dtype=numerator.dtype)
        loss = numerator / denom.clamp(min=1)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            # num_items_in_batch counts every process's tokens, and DDP averages gradients over processes.
            loss = loss * self.args.world_size

        if model.training:
            self._accumulate(out)
        return (loss, outputs) if return_outputs else loss

    def _accumulate(self, out: objectives.ObjectiveOutput) -> None:
        """Token-weighted running sums of the objective's diagnostics, reported at the next log step."""
        n = int(out.num_tokens)
        for key, value in out.metrics.items():
            self._pending[key] += float(value) * n
        self._pending["__tokens__"] += n
        self._pending["__sampled__"] += n * objectives.samples_per_token(
            self.objective_name, self.objective_params
        )

    def sync_counters(self) -> None:
        """Sum every process's pending sums into the run totals. Collective: all processes must call it
        (log steps, checkpoint saves and the end of training are reached by all of them together)."""
        pending, self._pending = dict(self._pending), defaultdict(float)
        if self.args.world_size > 1:
            gathered: list[dict[str, float]] = [{} for _ in range(self.args.world_size)]
            torch.distributed.all_gather_object(gathered, pending)
            pending = defaultdict(float)
            for part in gathered:
                for key, value in part.items():
                    pending[key] += value
        for key, value in pending.items():
            self._diag[key] += value
        self.tokens_seen += int(pending.get("__tokens__", 0))
        self.sampled_tokens += int(pending.get("__sampled__", 0))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log step (reached by every process at the same step)
            self.sync_counters()
            n = self._diag.pop("__tokens__", 0.0)
            self._diag.pop("__sampled__", None)
            for key, total in self._diag.items():
                logs[key] = total / n if n else float("nan")
            self._diag.clear()
            logs["tokens"] = self.tokens_seen
            logs["sampled_tokens"] = self.sampled_tokens
            logs["peak_memory_mb"] = peak_memory_mb()
        super().log(logs, start_time)


class MetricsLog(TrainerCallback):
    """Append every training log step as one JSON line to ``train/metrics.jsonl``."""

    def __init__(self, path: Path):
        self.path = path
        self._last = time.perf_counter()
        self._last_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        if not math.isfinite(logs["loss"]):
            # Fail fast: a diverged run must be marked failed, not evaluated as if it were fine.
            raise FloatingPointError(f"non-finite training loss {logs['loss']} at step {state.global_step}")
        if not state.is_world_process_zero:
            return
        now = time.perf_counter()
        steps = max(state.global_step - self._last_step, 1)
        row = {"step": state.global_step, **logs, "step_time_s": (now - self._last) / steps}
        self._last, self._last_step = now, state.global_step
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


COUNTERS_FILE = "harness_counters.json"


class CheckpointCounters(TrainerCallback):
    """Save the trainer's cumulative token counters inside every checkpoint, so a resumed run's compute
    accounting (metrics.jsonl `tokens` / `sampled_tokens`, summary.json) covers the whole run."""

    def __init__(self, trainer: ObjectiveTrainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        self.trainer.sync_counters()  # every process is here: count the steps since the last log step too
        if state.is_world_process_zero:
            # Written last, after transformers wrote the whole checkpoint: its presence marks it complete.
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / COUNTERS_FILE
            atomic_write_json(
                path, {"tokens_seen": self.trainer.tokens_seen, "sampled_tokens": self.trainer.sampled_tokens}
            )

    @staticmethod
    def restore(trainer: ObjectiveTrainer, checkpoint: str) -> None:
        counters = json.loads((Path(checkpoint) / COUNTERS_FILE).read_text())
        trainer.tokens_seen, trainer.sampled_tokens = counters["tokens_seen"], counters["sampled_tokens"]


def last_complete_checkpoint(train_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` that holds its counters file (i.e. was completely written), or None."""
    if not train_dir.is_dir():
        return None
    steps = sorted(
        (int(p.name.split("-", 1)[1]), p)
        for p in train_dir.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-", 1)[1].isdigit()
    )
    complete = [p for _, p in steps if (p / COUNTERS_FILE).is_file()]
    return complete[-1] if complete else None


def _remove_torn_checkpoints(train_dir: Path, keep: Path | None) -> None:
    """Delete checkpoints newer than ``keep`` (the resume point): torn by a kill mid-save, or to be redone."""
    upto = int(keep.name.split("-", 1)[1]) if keep else -1
    for p in train_dir.glob("checkpoint-*"):
        step = p.name.split("-", 1)[1]
        if p.is_dir() and step.isdigit() and int(step) > upto:
            log.warning("removing incomplete checkpoint %s (killed while it was written)", p)
            shutil.rmtree(p)


def _truncate_metrics(path: Path, upto_step: int) -> None:
    """On resume, drop log lines written after the checkpoint we resume from (they will be redone)."""
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= upto_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def load_model(cfg: RunConfig, model_path: str):
    """The base model as the config asks for it (dtype, attention implementation)."""
    kwargs: dict[str, Any] = {"dtype": _DTYPES[cfg.model_dtype]}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    return AutoModelForCausalLM.from_pretrained(model_path, **kwargs)


def add_lora(cfg: RunConfig, model):
    """Wrap ``model`` with trainable LoRA adapters (peft); every other weight is frozen."""
    from peft import LoraConfig, get_peft_model

    lc = cfg.lora
    assert lc is not None
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=lc.target_modules,
        bias=lc.bias,
        modules_to_save=lc.modules_to_save,
        use_rslora=lc.use_rslora,
    )
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as e:  # e.g. "Target modules {...} not found in the base model"
        names = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ConfigError(
            f"lora.target_modules: {str(e).splitlines()[0]} (this model's linear layers: {', '.join(names)})"
        ) from None
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA: %d of %d parameters trainable (%.2f%%)", trainable, total, 100 * trainable / total)
    return model


def build_trainer(cfg: RunConfig, run: RunDir) -> tuple[ObjectiveTrainer, dict[str, Any]]:
    """The Trainer of this run (model, tokenizer, tokenized data, objective), and the data statistics.

    Data are loaded and validated before the model, so a bad dataset fails in seconds, not after loading
    a 7B model. Tokenization runs on the main process first (others then reuse datasets' cache).
    """
    assert cfg.objective is not None and cfg.dataset is not None, "train() needs an objective and a dataset"
    set_seed(cfg.seed)
    model_path = resolve_ref(cfg.model, cfg.toy)

    # 1. The Trainer's arguments first: they set up the process group of a multi-process launch.
    try:
        args = TrainingArguments(
            output_dir=str(run.train_dir),
            seed=cfg.seed,
            data_seed=cfg.seed,
            remove_unused_columns=False,  # keep `shift_labels` for the objective
            disable_tqdm=not os.isatty(2),
            **{"dataloader_pin_memory": torch.cuda.is_available(), **cfg.training_arguments()},
        )
    except ValueError as e:  # values transformers rejects (e.g. bf16 without a bf16-capable device)
        raise ConfigError(f"training: {str(e).splitlines()[0]}") from None

    # 2. Tokenizer and data: rendered, tokenized, prompt masked, validated.
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data_stats: dict[str, Any] = {}
    with args.main_process_first(desc="tokenize"):
        dataset = build_dataset(cfg.dataset, resolve_ref(cfg.dataset.path, cfg.toy), tokenizer, data_stats)

    # 3. Model (a Hub name, a local directory or the toy base are all just a path here), + LoRA.
    model = load_model(cfg, model_path)
    if cfg.lora is not None:
        model = add_lora(cfg, model)

    trainer = ObjectiveTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PackingCollator() if cfg.dataset.packing else Collator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[MetricsLog(run.metrics_file)],
        objective_name=cfg.objective.name,
        objective_params=cfg.objective.params,
        run_seed=cfg.seed,
        loss_normalization=cfg.loss_normalization,
    )
    trainer.add_callback(CheckpointCounters(trainer))
    return trainer, data_stats


def _save_final(trainer: ObjectiveTrainer, cfg: RunConfig, run: RunDir) -> None:
    """Write ``train/final/`` (and ``train/adapter/`` for LoRA) atomically. Collective: all processes call it
    (FSDP/DeepSpeed gather the weights inside ``save_model``); only the main process writes."""
    main = trainer.is_world_process_zero()
    tmp = run.train_dir / ".final.tmp"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # the whole model, or only the adapter for a peft model
    if main:
        if cfg.lora is not None:
            # Merge into a fresh copy of the base loaded from disk: works whatever sharding trained it.
            from peft import PeftModel

            adapter_tmp = run.train_dir / ".adapter.tmp"
            shutil.rmtree(adapter_tmp, ignore_errors=True)
            os.replace(tmp, adapter_tmp)
            base = load_model(cfg, resolve_ref(cfg.model, cfg.toy))
            merged = PeftModel.from_pretrained(base, str(adapter_tmp)).merge_and_unload()
            merged.save_pretrained(str(tmp))
            adapter_dir = run.train_dir / "adapter"
            shutil.rmtree(adapter_dir, ignore_errors=True)
            os.replace(adapter_tmp, adapter_dir)
        trainer.processing_class.save_pretrained(str(tmp))
        if run.final_model.exists():
            shutil.rmtree(run.final_model)
        os.replace(tmp, run.final_model)
    trainer.accelerator.wait_for_everyone()


def train(cfg: RunConfig, run: RunDir) -> dict[str, Any] | None:
    """Fine-tune ``cfg.model`` with ``cfg.objective`` on ``cfg.dataset``; write into ``run``.

    Returns the summary on the main process, ``None`` on the others of a multi-process run.
    """
    started = time.time()
    trainer, data_stats = build_trainer(cfg, run)
    main = trainer.is_world_process_zero()

    # Resume from the last complete checkpoint if a previous attempt was killed.
    checkpoint = last_complete_checkpoint(run.train_dir)
    trainer.accelerator.wait_for_everyone()  # every process has looked before rank 0 cleans up
    if main:
        run.train_dir.mkdir(parents=True, exist_ok=True)
        _remove_torn_checkpoints(run.train_dir, checkpoint)
        if checkpoint:
            _truncate_metrics(run.metrics_file, int(checkpoint.name.split("-", 1)[1]))
        else:
            run.metrics_file.unlink(missing_ok=True)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
        CheckpointCounters.restore(trainer, str(checkpoint))
    trainer.accelerator.wait_for_everyone()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.sync_counters()  # the steps after the last log step

    _save_final(trainer, cfg, run)
    if not main:
        return None

    # Compute accounting for this run (the report's compute table reads it).
    losses = [r["loss"] for r in read_jsonl(run.metrics_file)]
    summary = {
        "objective": cfg.objective.name,
        "objective_params": cfg.objective.params,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "final_logged_loss": losses[-1] if losses else None,
        "wall_time_s": time.time() - started,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "response_tokens": trainer.tokens_seen,
        "sampled_tokens": trainer.sampled_tokens,
        "flos": trainer.state.total_flos,
        "peak_memory_mb": peak_memory_mb(),  # of the main process
        "num_processes": trainer.args.world_size,
        "num_parameters": trainer.model.num_parameters(),
        "num_trainable_parameters": trainer.model.num_parameters(only_trainable=True),
        "num_examples": len(trainer.train_dataset),
        "num_truncated": data_stats["num_truncated"],
        "num_no_response": data_stats["num_no_response"],
        "loss_normalization": cfg.loss_normalization,
    }
    atomic_write_json(run.summary_file, summary)
    return summary
