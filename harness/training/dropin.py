"""The objectives in other people's training code: a mixin for any ``transformers.Trainer`` (TRL's too).

``FusedObjectiveMixin`` goes first in the bases of a Trainer class: ``class MyTrainer(FusedObjectiveMixin,
SFTTrainer)`` (or ``Trainer``, or any subclass of it). The Trainer keeps everything it does -- data
handling (TRL's tokenization, completion-only masks, packing), optimizer, schedule, accumulation,
checkpoints, accelerate / DDP / FSDP -- and only its loss is replaced: ``compute_loss`` runs the model's
own forward once, with the objective computed by the LM head tile by tile (``fused.py``), so neither the
``[B, T, V]`` logits nor their gradient exist and nothing runs a second forward (TRL's ``compute_loss``,
which would, is not called).

The contract of the loss is the harness's ``loss_normalization: tokens``: the SUM of the per-token
losses of a micro-batch divided by the response tokens (labels != -100 after the shift) of the whole
optimizer step, all accumulation micro-batches and all processes (transformers' ``num_items_in_batch``),
so gradient accumulation and the number of processes do not change the update. Sampled objectives (OTR)
draw from a generator seeded by (``args.seed``, optimizer step, micro-batch, rank), so the same run gives
the same draws, also after a resume. Every training log line gets the objective's diagnostics
(token-weighted means since the last log line, summed over processes).

Only torch and the harness's own modules are imported here: TRL stays optional.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from transformers.modeling_outputs import CausalLMOutput

from harness import objectives
from harness.training import fused


def micro_batch_seed(run_seed: int, step: int, micro: int, rank: int) -> int:
    """Seed of the sampling generator of one micro-batch: a pure function of (run seed, optimizer step,
    micro-batch index within the step, process rank), so a resumed run redraws exactly what it would have."""
    key = f"{run_seed}/{step}/{micro}/{rank}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


class MicroBatchGenerators:
    """One seeded ``torch.Generator`` per micro-batch: ``next(step, rank, device)`` counts the calls made
    at the same optimizer ``step`` (the micro-batch index) and seeds with ``micro_batch_seed``."""

    def __init__(self, run_seed: int):
        self.run_seed = run_seed
        self._last = (-1, 0)  # (optimizer step, index of the micro-batch within it)

    def next(self, step: int, rank: int, device: torch.device) -> torch.Generator:
        last_step, micro = self._last
        micro = micro + 1 if last_step == step else 0
        self._last = (step, micro)
        return torch.Generator(device=device).manual_seed(micro_batch_seed(self.run_seed, step, micro, rank))


def _sum_over_processes(sums: dict[str, float], world_size: int) -> dict[str, float]:
    """``sums`` added up over every process (a collective when ``world_size > 1``)."""
    if world_size <= 1:
        return dict(sums)
    gathered: list[dict[str, float]] = [{} for _ in range(world_size)]
    torch.distributed.all_gather_object(gathered, dict(sums))
    total: dict[str, float] = defaultdict(float)
    for part in gathered:
        for key, value in part.items():
            total[key] += value
    return dict(total)


class FusedObjectiveMixin:
    """Put first in a Trainer's bases; the Trainer's loss becomes ``objective`` on the fused LM head.

    Takes two keyword arguments beyond the Trainer's: ``objective`` (``sft``, ``otr``, ``otr_exact``,
    ``dft``, ... : ``harness.objectives.available()``) and ``objective_params`` (e.g. ``{"k": 256,
    "tau": 1.2, "beta": -0.1}``), validated at construction (``ValueError``, one line). The model is
    patched (``fused.enable_fused_objective``) right after the Trainer's own ``__init__``, before
    accelerate wraps it; a head that cannot be fused raises ``fused.FusedHeadError`` there (one line).
    Batches need ``input_ids`` and HF-style ``labels`` (-100 = no loss; ``shift_labels`` also accepted).
    """

    # compute_loss divides by the tokens of the whole optimizer step itself: no extra division by the
    # number of accumulation steps in training_step.
    loss_is_scaled_for_ga = True

    def __init__(
        self, *args: Any, objective: str, objective_params: Mapping[str, Any] | None = None, **kwargs: Any
    ):
        params = dict(objective_params or {})
        objectives.validate_params(objective, params)  # a typo fails here, not at the first step
        if objectives.needs_reference(objective):  # this mixin loads no second model
            raise ValueError(
                f"objective {objective!r} needs a frozen reference model, which FusedObjectiveMixin does not "
                "load: use harness.training.trainer.ObjectiveTrainer(reference_model=...)"
            )
        super().__init__(*args, **kwargs)
        self.objective_name = objective
        self.objective_params = params
        # transformers counts the step's response tokens (num_items_in_batch) only for models that take
        # loss kwargs; we always want the count.
        self.model_accepts_loss_kwargs = True
        fused.enable_fused_objective(self.model)
        # Evaluation draws from its own sequence, so an eval_dataset does not shift the training draws.
        self._draws = {
            True: MicroBatchGenerators(self.args.seed),
            False: MicroBatchGenerators(~self.args.seed),
        }
        self._objective_sums: dict[str, float] = defaultdict(float)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """One forward through ``model`` (wrappers' hooks run); the objective's sum over the step's tokens."""
        generator = self._draws[model.training].next(
            self.state.global_step, self.args.process_index, fused.fused_head(model).weight.device
        )
        out = fused.fused_loss(model, inputs, self.objective_name, generator, **self.objective_params)
        denom = out.num_tokens if num_items_in_batch is None else num_items_in_batch
        denom = torch.as_tensor(denom, device=out.loss.device, dtype=out.loss.dtype)
        loss = out.loss / denom.clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's tokens, and DDP averages gradients over processes.
            loss = loss * self.accelerator.num_processes
        if model.training:
            n = int(out.num_tokens)
            for key, value in out.metrics.items():
                self._objective_sums[key] += float(value) * n
            self._objective_sums["__tokens__"] += n
        return (loss, CausalLMOutput(loss=loss)) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """A training log line (every process reaches it together) gets the objective's diagnostics."""
        if "loss" in logs:
            sums = _sum_over_processes(self._objective_sums, self.args.world_size)
            self._objective_sums = defaultdict(float)
            n = sums.pop("__tokens__", 0.0)
            for key, total in sums.items():
                logs[key] = total / n if n else float("nan")
        super().log(logs, *args, **kwargs)


__all__ = ["FusedObjectiveMixin", "MicroBatchGenerators", "micro_batch_seed"]
