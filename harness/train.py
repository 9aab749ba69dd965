"""The fine-tuning recipe: RunConfig in, fine-tuned checkpoint + metrics log + compute summary out.

Reads top to bottom: seed -> model and tokenizer -> data -> Trainer with the chosen objective -> train
(resuming from the last checkpoint if there is one) -> save the final model atomically -> summary.

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
uninterrupted run's. ``report_to`` passes through too (e.g. ``report_to: tensorboard`` writes event files
under ``train/runs/<date>_<host>/``, offline, if the ``tensorboard`` package is installed — it is not by
default; the default is ``none``). ``train/metrics.jsonl`` is written either way.
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
from transformers.trainer_utils import get_last_checkpoint

from harness import objectives
from harness.config import RunConfig
from harness.data import IGNORE_INDEX, Collator, build_dataset
from harness.rundir import RunDir, atomic_write_json, read_jsonl
from harness.toy import resolve as resolve_ref

log = logging.getLogger(__name__)


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
        self._diag: dict[str, float] = defaultdict(float)
        self.tokens_seen = 0
        self.sampled_tokens = 0

    def _generator(self, device: torch.device) -> torch.Generator:
        """A generator seeded from (run seed, step, micro-batch, rank): same run -> same draws, also on resume."""
        step, micro = self._micro_step
        micro = micro + 1 if step == self.state.global_step else 0
        self._micro_step = (self.state.global_step, micro)
        key = f"{self.run_seed}/{self.state.global_step}/{micro}/{self.args.process_index}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1
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
        outputs = model(**inputs)
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
        n = out.num_tokens
        for key, value in out.metrics.items():
            self._diag[key] += value * n
        self._diag["__tokens__"] += n
        self.tokens_seen += n
        self.sampled_tokens += n * objectives.samples_per_token(self.objective_name, self.objective_params)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log step
            n = self._diag.pop("__tokens__", 0.0)
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
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / COUNTERS_FILE
            atomic_write_json(
                path, {"tokens_seen": self.trainer.tokens_seen, "sampled_tokens": self.trainer.sampled_tokens}
            )

    @staticmethod
    def restore(trainer: ObjectiveTrainer, checkpoint: str) -> None:
        path = Path(checkpoint) / COUNTERS_FILE
        if path.exists():  # absent only if the run was killed between the checkpoint and this file
            counters = json.loads(path.read_text())
            trainer.tokens_seen, trainer.sampled_tokens = counters["tokens_seen"], counters["sampled_tokens"]
        else:
            log.warning("%s has no %s: token counts restart at 0", checkpoint, COUNTERS_FILE)


def _truncate_metrics(path: Path, upto_step: int) -> None:
    """On resume, drop log lines written after the checkpoint we resume from (they will be redone)."""
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= upto_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def train(cfg: RunConfig, run: RunDir) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` with ``cfg.objective`` on ``cfg.dataset``; write into ``run``. Returns the summary."""
    assert cfg.objective is not None and cfg.dataset is not None, "train() needs an objective and a dataset"
    started = time.time()
    set_seed(cfg.seed)

    # 1. Model and tokenizer: a Hub name, a local directory or the toy base are all just a path here.
    model_path = resolve_ref(cfg.model, cfg.toy)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)

    # 2. Data: rendered, tokenized, prompt masked.
    data_stats: dict[str, Any] = {}
    dataset = build_dataset(cfg.dataset, resolve_ref(cfg.dataset.path, cfg.toy), tokenizer, data_stats)

    # 3. The Trainer, with the recipe's defaults overridden by the config's `training:` block.
    run.train_dir.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        output_dir=str(run.train_dir),
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,  # keep `shift_labels` for the objective
        disable_tqdm=not os.isatty(2),
        **{"dataloader_pin_memory": torch.cuda.is_available(), **cfg.training_arguments()},
    )
    trainer = ObjectiveTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=Collator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[MetricsLog(run.metrics_file)],
        objective_name=cfg.objective.name,
        objective_params=cfg.objective.params,
        run_seed=cfg.seed,
        loss_normalization=cfg.loss_normalization,
    )

    # 4. Train, resuming from the last complete checkpoint if a previous attempt was killed.
    trainer.add_callback(CheckpointCounters(trainer))
    checkpoint = get_last_checkpoint(str(run.train_dir)) if run.train_dir.exists() else None
    if checkpoint:
        log.info("resuming from %s", checkpoint)
        _truncate_metrics(run.metrics_file, int(checkpoint.rsplit("-", 1)[-1]))
        CheckpointCounters.restore(trainer, checkpoint)
    elif run.metrics_file.exists():
        run.metrics_file.unlink()
    result = trainer.train(resume_from_checkpoint=checkpoint)

    # 5. The final model, with its tokenizer, appears atomically.
    tmp = run.train_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if run.final_model.exists():
        shutil.rmtree(run.final_model)
    os.replace(tmp, run.final_model)

    # 6. Compute accounting for this run (the report's compute table reads it).
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
        "peak_memory_mb": peak_memory_mb(),
        "num_parameters": model.num_parameters(),
        "num_examples": len(dataset),
        "num_truncated": data_stats["num_truncated"],
        "num_no_response": data_stats["num_no_response"],
        "loss_normalization": cfg.loss_normalization,
    }
    atomic_write_json(run.summary_file, summary)
    return summary
