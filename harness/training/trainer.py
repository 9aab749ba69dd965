"""The objective inside transformers' ``Trainer``: ``ObjectiveTrainer`` and its two callbacks.

The objective is plugged into ``Trainer.compute_loss``; the Trainer never knows which objective runs, and
the objectives never know about the Trainer. Normalisation happens here, once, for every objective: the
objective returns the SUM of its per-token losses, and we divide by the number of response tokens in the
whole optimizer step (all gradient-accumulation micro-batches, all processes), which transformers counts
for us as ``num_items_in_batch``.

``loss_normalization: sequences`` instead weights every sequence equally: each sequence's summed loss is
divided by its own response tokens, and the sum of those per-sequence means is divided by the number of
sequences of the whole optimizer step that have at least one response token (again all micro-batches,
all processes). ``_get_num_items_in_batch`` counts those sequences in place of tokens, with transformers'
own cross-device reduction, so the two modes differ only in what is counted and in the numerator.

Two training paths compute the same loss (``training_path``): ``fused`` (the default) asks the model's
own forward for the objective (``fused.py``: the LM head computes it tile by tile from the final hidden
states, so neither the ``[B, T, V]`` logits nor their gradient ever exist); ``logits`` (the reference)
takes ``model(...).logits`` and hands them to ``objectives.compute``. Normalisation, diagnostics and
draws are the same on both.

Reference objectives (``asft``) also need the frozen reference model's logits: ``reference_model=`` (the
base model loaded once more; ``model.load_reference``), or, for a LoRA policy, nothing (the policy with
its adapters disabled). Every micro-batch runs the reference's no-grad forward on the same inputs first
(``reference.py``: what it costs, what is refused), and its KL to the policy is logged as ``kl_ref``.

Sampling objectives (OTR) draw from a generator seeded by ``micro_batch_seed`` (run seed, step,
micro-batch, rank), so a run resumed from a checkpoint redraws exactly what the uninterrupted run drew.

Multi-process: the logged diagnostics and token counters are summed over processes (``sync_counters``, a
collective), and only the main process writes (``MetricsLog``'s lines, ``CheckpointCounters``' file).
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.modeling_outputs import CausalLMOutput

from harness import objectives
from harness.config import ConfigError
from harness.training import fused
from harness.training.checkpoints import checkpoint_path, read_counters, write_counters
from harness.training.data import IGNORE_INDEX
from harness.training.dropin import MicroBatchGenerators, micro_batch_seed
from harness.training.reference import ReferenceModel

TRAINING_PATHS = ("fused", "logits")
__all__ = ["ObjectiveTrainer", "MetricsLog", "CheckpointCounters", "micro_batch_seed", "peak_memory_mb"]


def peak_memory_mb() -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, else the peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class ObjectiveTrainer(Trainer):
    """A ``Trainer`` whose loss is a token-level objective from ``harness.objectives``.

    ``training_path``: ``"fused"`` (default: the model is patched here, before accelerate wraps it; a
    model whose head cannot be fused raises ``ConfigError``, one line naming ``training_path``, the model
    type, the reason and the way out) or ``"logits"`` (the reference path). ``reference_model``: the
    frozen base model of a reference objective (``asft``); None with LoRA (adapters disabled instead).
    """

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
        training_path: str = "fused",
        reference_model: torch.nn.Module | None = None,
        **kwargs,
    ):
        if loss_normalization not in ("tokens", "sequences"):
            raise ValueError(
                f"loss_normalization must be 'tokens' or 'sequences', got {loss_normalization!r}"
            )
        if training_path not in TRAINING_PATHS:
            raise ValueError(
                f"training_path must be one of {', '.join(TRAINING_PATHS)}, got {training_path!r}"
            )
        super().__init__(*args, **kwargs)
        self.loss_normalization = loss_normalization
        self.training_path = training_path
        if training_path == "fused":  # before accelerate wraps the model (in train())
            try:
                fused.enable_fused_objective(self.model)
            except fused.FusedHeadError as e:
                # one line: the field, the model type, the reason and the way out (training_path: logits)
                raise ConfigError(f"training_path: {str(e).removeprefix('fused training path: ')}") from None
        self.objective_name = objective_name
        self.objective_params = objective_params
        self.run_seed = run_seed
        self.reference = self._reference(reference_model)
        # Make the Trainer count the response tokens of the whole accumulated batch (it does so only for
        # models that take loss kwargs); our collator provides `shift_labels`, which it counts as they are.
        self.model_accepts_loss_kwargs = True
        self._draws = MicroBatchGenerators(run_seed)
        # This process's token-weighted diagnostic sums and counters since the last sync_counters().
        self._pending: dict[str, float] = defaultdict(float)
        # All processes' sums since the last log step (filled by sync_counters, emptied by log).
        self._diag: dict[str, float] = defaultdict(float)
        self.tokens_seen = 0  # all processes, whole run (restored on resume)
        self.sampled_tokens = 0

    def _reference(self, model: torch.nn.Module | None) -> ReferenceModel | None:
        """The frozen reference of a reference objective (None for the others); refusals in one line."""
        name = self.objective_name
        if not objectives.needs_reference(name):
            if model is not None:
                raise ValueError(f"objective {name!r} takes no reference model (reference_model= given)")
            return None
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ConfigError(
                f"launcher: objective {name!r} needs a frozen reference model, which the harness does not "
                "shard: train it without FSDP / DeepSpeed (one process, or plain DDP)"
            )
        if self.training_path == "fused" and model is not None:
            try:  # the reference's head is read like the policy's: it must be fusable too
                fused.enable_fused_objective(model)
            except fused.FusedHeadError as e:
                raise ConfigError(f"training_path: {str(e).removeprefix('fused training path: ')}") from None
        return ReferenceModel.for_policy(self.model, model, name, self.accelerator.autocast)

    def _generator(self, device: torch.device) -> torch.Generator:
        """A generator seeded from (run seed, step, micro-batch, rank): same run -> same draws, also on resume."""
        return self._draws.next(self.state.global_step, self.args.process_index, device)

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
        self, logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, objectives.ObjectiveOutput]:
        """The numerator of the loss, and the objective's output (for its token-weighted diagnostics).
        ``ref_logits``: the reference model's logits (reference objectives only)."""
        generator = self._generator(logits.device)
        if self.loss_normalization == "tokens":
            out = objectives.compute(
                self.objective_name, logits, labels, ref_logits=ref_logits, generator=generator,
                **self.objective_params,
            )  # fmt: skip
            return out.loss, out
        # sequences: the objective per sequence (one call per row, same generator in row order)
        rows = [
            objectives.compute(
                self.objective_name,
                logits[i],
                labels[i],
                generator=generator,
                **self.objective_params,
                ref_logits=None if ref_logits is None else ref_logits[i],
            )
            for i in range(labels.shape[0])
        ]
        return self._per_sequence(rows)

    @staticmethod
    def _per_sequence(
        rows: list[objectives.ObjectiveOutput],
    ) -> tuple[torch.Tensor, objectives.ObjectiveOutput]:
        """``sequences`` numerator: each row's sum divided by its own response tokens, summed over rows;
        rows without response tokens contribute nothing (an all-empty micro-batch gives a graph-connected 0)."""
        numerator = sum(r.loss / r.num_tokens for r in rows if r.num_tokens > 0)
        if not torch.is_tensor(numerator):  # no response token in this micro-batch
            numerator = sum(r.loss for r in rows) * 0.0
        merged = objectives.ObjectiveOutput(
            loss=sum(r.loss.detach() for r in rows),
            num_tokens=sum(r.num_tokens for r in rows),
            metrics=objectives.merge_metrics(rows),
        )
        return numerator, merged

    def _fused_objective(
        self, model: torch.nn.Module, inputs: dict[str, Any], labels: torch.Tensor
    ) -> tuple[torch.Tensor, objectives.ObjectiveOutput]:
        """``_objective`` through the model's own forward (``fused.py``): same draws, same numerator.

        The generator lives on the LM head's device, where ``_objective``'s logits would be."""
        generator = self._generator(fused.fused_head(model).weight.device)
        per_sequence = self.loss_normalization == "sequences"
        reference = self.reference.head(model, inputs) if self.reference is not None else None
        spec = fused.FusedObjective(
            self.objective_name, labels, self.objective_params, generator, per_sequence=per_sequence,
            reference=reference,
        )  # fmt: skip
        result = model(**inputs, use_cache=False, fused_objective=spec)
        return self._per_sequence(result) if per_sequence else (result.loss, result)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("shift_labels")
        inputs.pop("labels", None)  # we compute the loss; the model must not
        # No KV cache in training; transformers also reads packed examples' boundaries from position_ids
        # only when there is no cache (and no attention mask).
        if self.training_path == "fused":
            numerator, out = self._fused_objective(model, inputs, labels)
            outputs = CausalLMOutput()  # no logits on this path (filled with the loss below)
        else:
            ref_logits = self.reference.logits(model, inputs) if self.reference is not None else None
            outputs = model(**inputs, use_cache=False)
            numerator, out = self._objective(outputs.logits, labels, ref_logits)
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
        if return_outputs and self.training_path == "fused":
            outputs["loss"] = loss
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


class CheckpointCounters(TrainerCallback):
    """Save the trainer's cumulative token counters inside every checkpoint, so a resumed run's compute
    accounting (metrics.jsonl `tokens` / `sampled_tokens`, summary.json) covers the whole run."""

    def __init__(self, trainer: ObjectiveTrainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        self.trainer.sync_counters()  # every process is here: count the steps since the last log step too
        if state.is_world_process_zero:
            # Written last, after transformers wrote the whole checkpoint: its presence marks it complete.
            write_counters(
                checkpoint_path(Path(args.output_dir), state.global_step),
                self.trainer.tokens_seen,
                self.trainer.sampled_tokens,
            )

    @staticmethod
    def restore(trainer: ObjectiveTrainer, checkpoint: str | Path) -> None:
        """Set the trainer's counters to those saved in ``checkpoint`` (the one training resumes from)."""
        trainer.tokens_seen, trainer.sampled_tokens = read_counters(Path(checkpoint))
