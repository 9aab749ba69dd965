"""The phases every training recipe shares: its arguments, tokenizer, resume point and compute summary.

``recipe.py`` (token-level objectives, the harness's Trainer) and ``grpo.py`` (TRL's GRPOTrainer) both
build their run from these, so the two kinds of run resume, check and account for compute the same way:

* ``build_arguments``: the run's ``TrainingArguments`` (or a subclass such as TRL's ``GRPOConfig``) from its
  ``training:`` block; a value the library rejects is a one-line ``ConfigError``. ``check_optimizer``
  instantiates the optimizer they select on a dummy parameter (its own checks run before the run does).
* ``load_tokenizer``: the model's tokenizer, pad token = EOS where it has none.
* ``prepare_resume``: the last complete checkpoint, the run directory made consistent with it (torn
  checkpoints and later log lines removed), the trainer's token counters restored.
* ``compute_summary``: ``train/summary.json``, the compute accounting the report compares methods by.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, Trainer, TrainingArguments

from harness.config import ConfigError, RunConfig
from harness.runs.io import read_jsonl
from harness.runs.layout import RunDir, checkpoint_step
from harness.training.checkpoints import last_complete_checkpoint, remove_torn_checkpoints, truncate_metrics
from harness.training.trainer import CheckpointCounters, peak_memory_mb

# The recipe's logger: "resuming from ..." is the recipe's message, whichever recipe runs (users and tests
# filter on this name).
log = logging.getLogger("harness.training.recipe")


# Flags whose validity depends on the machine's devices: not checked where the runs execute elsewhere.
DEVICE_FLAGS = ("bf16", "fp16", "tf32", "bf16_full_eval", "fp16_full_eval")


def build_arguments(
    cfg: RunConfig,
    output_dir: str,
    drop: tuple[str, ...] = (),
    *,
    args_class: type[TrainingArguments] = TrainingArguments,
    defaults: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    where: str = "training",
) -> TrainingArguments:
    """``args_class`` (TrainingArguments, or a subclass such as TRL's GRPOConfig) of this run: ``defaults``
    under the run's ``training:`` values, ``extra`` over them; a rejected value is a ``ConfigError`` on
    ``where``."""
    values = {
        "dataloader_pin_memory": torch.cuda.is_available(),
        **(defaults or {}),
        **cfg.training_arguments(),
        **(extra or {}),
    }
    try:
        return args_class(
            output_dir=output_dir,
            seed=cfg.seed,
            data_seed=cfg.seed,
            remove_unused_columns=False,  # keep `shift_labels` for the objective
            disable_tqdm=not os.isatty(2),
            **{k: v for k, v in values.items() if k not in drop},
        )
    except (ValueError, TypeError) as e:  # e.g. bf16 without a bf16-capable device
        raise ConfigError(f"{where}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None


def load_tokenizer(model_path: str):
    """The model's tokenizer (pad token = EOS when it has none); a path it cannot load is a ``ConfigError``."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"model: cannot load a tokenizer from '{model_path}' ({first})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_optimizer(args: TrainingArguments) -> None:
    """Instantiate the optimizer ``args`` selects on one dummy parameter: its own argument checks run."""
    try:
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
        param = torch.nn.Parameter(torch.zeros(1))
        cls([{"params": [param], "weight_decay": args.weight_decay}], **kwargs)
    except (ValueError, TypeError, ImportError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "pass a model" in first or "pass a `model`" in first:
            return  # GaLore, APOLLO, LOMO need the model itself: their checks run when the run starts
        optim = getattr(args.optim, "value", args.optim)
        optim = f"{optim}' with optim_args '{args.optim_args}" if args.optim_args else optim
        raise ConfigError(
            f"training.optim: the optimizer '{optim}' rejects these settings: {first}"
        ) from None


def prepare_resume(
    trainer: Trainer, run: RunDir, restore: Callable[[Any, Path], None] = CheckpointCounters.restore
) -> Path | None:
    """The checkpoint to resume from (None: start afresh), with the run directory made consistent with it.

    Collective: all processes call it. Rank 0 removes what a killed attempt left after the resume point
    (torn checkpoints, log lines) once every process has chosen the checkpoint; all restore its counters
    (``restore(trainer, checkpoint)``: the trainer's own counters callback's).
    """
    checkpoint = last_complete_checkpoint(run.train_dir)
    trainer.accelerator.wait_for_everyone()  # every process has looked before rank 0 cleans up
    if trainer.is_world_process_zero():
        run.train_dir.mkdir(parents=True, exist_ok=True)
        remove_torn_checkpoints(run.train_dir, checkpoint)
        if checkpoint:
            truncate_metrics(run.metrics_file, checkpoint_step(checkpoint))
        else:
            run.metrics_file.unlink(missing_ok=True)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
        restore(trainer, checkpoint)
    trainer.accelerator.wait_for_everyone()
    return checkpoint


def compute_summary(
    cfg: RunConfig,
    run: RunDir,
    trainer: Trainer,
    result: Any,
    data_stats: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """Compute accounting of the finished run (``train/summary.json``; the report's compute table reads it).

    ``result`` is ``Trainer.train``'s ``TrainOutput``; ``started`` the ``time.time()`` the recipe began at.
    ``response_tokens``: tokens that carried loss; ``sampled_tokens``: tokens drawn per position by a
    sampled objective (OTR's K each); ``generated_tokens``: completion tokens generated (GRPO; 0 for the
    token-level objectives, which generate nothing); ``flos``: transformers' 6 N per trained token (GRPO adds
    its generation and no-grad forwards: ``grpo_trainer.py``).
    """
    assert cfg.objective is not None
    losses = [r["loss"] for r in read_jsonl(run.metrics_file)]
    return {
        "objective": cfg.objective.name,
        "objective_params": cfg.objective.params,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "final_logged_loss": losses[-1] if losses else None,
        "wall_time_s": time.time() - started,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "response_tokens": trainer.tokens_seen,
        "sampled_tokens": trainer.sampled_tokens,
        "generated_tokens": getattr(trainer, "generated_tokens", 0),
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


__all__ = [
    "DEVICE_FLAGS",
    "build_arguments",
    "check_optimizer",
    "compute_summary",
    "load_tokenizer",
    "prepare_resume",
]
