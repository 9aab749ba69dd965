"""TRL's ``GRPOTrainer`` with the harness's compute accounting and an exactly resumable data order.

Imports TRL: only ``grpo.py`` imports this module, after checking that TRL is installed. Nothing of
GRPO itself changes here (generation, rewards, advantages, loss are TRL's); the subclass only counts and
reseeds:

* ``tokens_seen``: completion tokens that carried loss (TRL's loss mask), summed over the micro-batches
  of every optimizer step (a completion reused for ``num_iterations`` steps counts each time) — the
  analogue of a token-level run's response tokens. ``generated_tokens``: completion tokens sampled by
  generation (each once). ``sampled_tokens`` is 0 (that is OTR's K draws per position). All three are
  cumulative over the whole run, summed over processes (``sync_counters``, a collective reached at log
  and save steps by every process), saved in each checkpoint and restored on resume.
* FLOPs (``state.total_flos``, summary ``flos``): transformers' own estimate counts 6 N per token of the
  batch's ``input_ids`` (N = parameters without embeddings), which GRPO batches do not have, so it would
  stay 0. Here: 6 N per token of each trained micro-batch (prompt + completion, padding included, as
  transformers counts), plus 2 N per token for each forward without gradient — the generation itself
  (prefill and decoding) and, when they run, the reference model (``beta > 0``) and the old-policy
  log-probs (``num_iterations > 1``). Gradient checkpointing's recomputation is not counted (nor is it
  for the token-level runs).
* Data order: TRL's ``RepeatSampler`` draws each epoch's permutation from one generator seeded once, so a
  run resumed in epoch e > 0 (a fresh sampler) would see epoch 0's order again. ``EpochRepeatSampler``
  reseeds it with ``seed + epoch`` at every epoch start (accelerate forwards ``set_epoch`` to it), so the
  order is a function of (seed, epoch) and a resumed run sees what the uninterrupted one saw. Generation
  draws from the global torch RNG, which transformers restores from the checkpoint on resume.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from harness.training.checkpoints import checkpoint_path, read_counters, read_generated_tokens, write_counters
from harness.training.trainer import peak_memory_mb


class EpochRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` whose permutation of epoch e is drawn from a generator seeded ``seed + e``."""

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + epoch)


class HarnessGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` + token counters, FLOPs and per-epoch data order (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # This process's counts since the last sync_counters(); run totals (all processes) below.
        self._pending: dict[str, float] = defaultdict(float)
        self.tokens_seen = 0
        self.sampled_tokens = 0
        self.generated_tokens = 0
        # N of transformers' 6 N FLOPs per token (embeddings excluded, as in Trainer.floating_point_ops).
        self._flop_params = self.model.num_parameters(exclude_embeddings=True)

    def _get_train_sampler(self, dataset=None) -> EpochRepeatSampler:
        base = super()._get_train_sampler(dataset)
        return EpochRepeatSampler(
            data_source=base.data_source,
            mini_repeat_count=base.mini_repeat_count,
            batch_size=base.batch_size,
            repeat_count=base.repeat_count,
            shuffle=base.shuffle,
            seed=base.seed,
        )

    def _generate(self, prompts: list):
        out = super()._generate(prompts)
        if self.model.training:
            completion_ids, tool_mask = out[1], out[2]
            self._pending["generated"] += (
                sum(sum(m) for m in tool_mask)
                if tool_mask is not None
                else sum(len(c) for c in completion_ids)
            )
        return out

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            tokens = out["prompt_ids"].numel() + out["completion_ids"].numel()
            # the generation, + the no-grad forwards TRL ran on the same batch
            forwards = 1 + ("old_per_token_logps" in out) + ("ref_per_token_logps" in out)
            self.current_flos += 2 * self._flop_params * tokens * forwards
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.model.training:
            mask = inputs["completion_mask"]
            if "tool_mask" in inputs:
                mask = mask * inputs["tool_mask"]
            self._pending["tokens"] += int(mask.sum())
            tokens = inputs["prompt_ids"].numel() + inputs["completion_ids"].numel()
            self.current_flos += 6 * self._flop_params * tokens
        return loss

    def sync_counters(self) -> None:
        """Add every process's pending counts to the run totals. Collective: all processes call it."""
        pending, self._pending = dict(self._pending), defaultdict(float)
        if self.args.world_size > 1:
            gathered: list[dict[str, float]] = [{} for _ in range(self.args.world_size)]
            torch.distributed.all_gather_object(gathered, pending)
            pending = defaultdict(float)
            for part in gathered:
                for key, value in part.items():
                    pending[key] += value
        self.tokens_seen += int(pending.get("tokens", 0))
        self.generated_tokens += int(pending.get("generated", 0))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log step (reached by every process at the same step)
            self.sync_counters()
            logs["tokens"] = self.tokens_seen
            logs["sampled_tokens"] = self.sampled_tokens
            logs["generated_tokens"] = self.generated_tokens
            logs["peak_memory_mb"] = peak_memory_mb()
        super().log(logs, start_time)


class GRPOCheckpointCounters(TrainerCallback):
    """Save the trainer's cumulative counters inside every checkpoint (written last: marks it complete)."""

    def __init__(self, trainer: HarnessGRPOTrainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        self.trainer.sync_counters()  # every process is here: count the steps since the last log step too
        if state.is_world_process_zero:
            write_counters(
                checkpoint_path(Path(args.output_dir), state.global_step),
                self.trainer.tokens_seen,
                self.trainer.sampled_tokens,
                generated_tokens=self.trainer.generated_tokens,
            )

    @staticmethod
    def restore(trainer: HarnessGRPOTrainer, checkpoint: str | Path) -> None:
        """Set the trainer's counters to those saved in ``checkpoint`` (the one training resumes from)."""
        trainer.tokens_seen, trainer.sampled_tokens = read_counters(Path(checkpoint))
        trainer.generated_tokens = read_generated_tokens(Path(checkpoint))


__all__ = ["EpochRepeatSampler", "GRPOCheckpointCounters", "HarnessGRPOTrainer"]
