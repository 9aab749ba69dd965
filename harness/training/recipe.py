"""The fine-tuning recipe: RunConfig in, fine-tuned checkpoint + metrics log + compute summary out.

``train(cfg, run)`` reads top to bottom as its phases: resolve refs -> training arguments -> tokenizer and
data (validated before any model is loaded) -> model (+ LoRA adapters) -> Trainer with the chosen objective
-> resume (from the last complete checkpoint, if there is one) -> train -> save the final model atomically
-> write the summary. The pieces live beside it: ``trainer`` (the objective inside the Trainer's loss, the
metrics log), ``checkpoints`` (what a resume reads and cleans up), ``model`` (load, LoRA, final save),
``data`` (load, template, tokenize, mask prompts).

Checkpoints: ``training: {save_strategy: steps, save_steps: N, save_total_limit: M}`` (TrainingArguments
names) keeps the last M checkpoints in ``train/checkpoint-*``; a re-run resumes from the last one with the
same data order, optimizer/scheduler/RNG state and OTR draws (seeded by step), so its losses equal an
uninterrupted run's. A checkpoint counts as complete once ``harness_counters.json`` is in it (written
after transformers has written everything else); a torn one left by a kill mid-save is skipped and removed.
``report_to`` passes through too (e.g. ``report_to: tensorboard`` writes event files under
``train/runs/<date>_<host>/``, offline, with the ``tensorboard`` package installed — the ``dev`` extra has
it; the default is ``none``). ``train/metrics.jsonl`` is written either way.

Before anything runs, ``preflight(cfg)`` rejects what would make the run fail later, as one
``ConfigError`` line naming the field: it builds the full ``TrainingArguments`` and the optimizer (whose
own argument checks run), and loads, renders and tokenizes the data with the model's tokenizer (the
model itself is never loaded). ``sweep run`` calls it for every run it will execute, ``otr-harness train``
for its run, both before the first run starts or anything is written.

Multi-process (``launcher:``, run under ``accelerate launch``): every process trains on its shard of each
global batch; the loss denominator counts the response tokens of all processes (transformers' gather),
the logged diagnostics and token counters are summed over processes, and only the main process (rank 0)
writes to the run directory (metrics, checkpoints' counters, final model, summary). ``train()`` returns the
summary on rank 0 and ``None`` elsewhere.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, TrainingArguments, set_seed

from harness.config import ConfigError, RunConfig
from harness.runs.io import atomic_write_json, read_jsonl
from harness.runs.layout import RunDir, checkpoint_step
from harness.toy import resolve as resolve_ref
from harness.training.checkpoints import last_complete_checkpoint, remove_torn_checkpoints, truncate_metrics
from harness.training.data import Collator, PackingCollator, build_dataset
from harness.training.model import add_lora, load_model, save_final
from harness.training.trainer import CheckpointCounters, MetricsLog, ObjectiveTrainer, peak_memory_mb

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run: RunDir) -> dict[str, Any] | None:
    """Fine-tune ``cfg.model`` with ``cfg.objective`` on ``cfg.dataset``; write into ``run``.

    Returns the summary on the main process, ``None`` on the others of a multi-process run.
    """
    started = time.time()
    trainer, data_stats = build_trainer(cfg, run)
    checkpoint = prepare_resume(trainer, run)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.sync_counters()  # the steps after the last log step
    save_final(trainer, cfg, run)
    if not trainer.is_world_process_zero():
        return None
    summary = compute_summary(cfg, run, trainer, result, data_stats, started)
    atomic_write_json(run.summary_file, summary)
    return summary


def build_trainer(cfg: RunConfig, run: RunDir) -> tuple[ObjectiveTrainer, dict[str, Any]]:
    """The Trainer of this run (model, tokenizer, tokenized data, objective), and the data statistics.

    Data are loaded and validated before the model, so a bad dataset fails in seconds, not after loading
    a 7B model. Tokenization runs on the main process first (others then reuse datasets' cache).
    """
    assert cfg.objective is not None and cfg.dataset is not None, "train() needs an objective and a dataset"
    set_seed(cfg.seed)
    # 1. References: a Hub name, a local path or a toy reference (which builds the toy world if needed).
    model_path = resolve_ref(cfg.model, cfg.toy)
    data_path = resolve_ref(cfg.dataset.path, cfg.toy)
    # 2. The Trainer's arguments first: they set up the process group of a multi-process launch.
    args = training_arguments(cfg, run)
    # 3. Tokenizer and data: rendered, tokenized, prompt masked, validated.
    tokenizer = load_tokenizer(model_path)
    data_stats: dict[str, Any] = {}
    with args.main_process_first(desc="tokenize"):
        dataset = build_dataset(cfg.dataset, data_path, tokenizer, data_stats)
    # 4. Model, + LoRA adapters.
    model = load_model(cfg, model_path)
    if cfg.lora is not None:
        model = add_lora(cfg, model)
    # 5. The Trainer, with the objective in its loss.
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
        training_path=cfg.training_path,
    )
    trainer.add_callback(CheckpointCounters(trainer))
    return trainer, data_stats


def training_arguments(cfg: RunConfig, run: RunDir) -> TrainingArguments:
    """transformers' arguments of this run; values transformers rejects become a ``ConfigError``."""
    return _arguments(cfg, str(run.train_dir))


# Flags whose validity depends on the machine's devices: not checked where the runs execute elsewhere.
_DEVICE_FLAGS = ("bf16", "fp16", "tf32", "bf16_full_eval", "fp16_full_eval")


def _arguments(cfg: RunConfig, output_dir: str, drop: tuple[str, ...] = ()) -> TrainingArguments:
    values = {"dataloader_pin_memory": torch.cuda.is_available(), **cfg.training_arguments()}
    try:
        return TrainingArguments(
            output_dir=output_dir,
            seed=cfg.seed,
            data_seed=cfg.seed,
            remove_unused_columns=False,  # keep `shift_labels` for the objective
            disable_tqdm=not os.isatty(2),
            **{k: v for k, v in values.items() if k not in drop},
        )
    except (ValueError, TypeError) as e:  # e.g. bf16 without a bf16-capable device
        raise ConfigError(f"training: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None


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


def preflight(cfg: RunConfig, *, data: bool = True, device_check: bool = True) -> None:
    """Raise ``ConfigError`` (one line, naming the field) for what would make this run fail later.

    Builds the full ``TrainingArguments`` (into a temporary directory: nothing of the run is written) and
    the optimizer on a dummy parameter, so that its own argument checks run; with ``data``, loads,
    renders and tokenizes the dataset with the model's tokenizer (``build_dataset``'s validation). No
    model is loaded. ``device_check=False`` leaves out the precision flags whose validity depends on the
    machine (the runs execute on other machines, e.g. under SLURM).
    """
    if not cfg.is_training:
        return
    assert cfg.dataset is not None
    with tempfile.TemporaryDirectory(prefix="otr-harness-preflight-") as tmp:
        args = _arguments(cfg, tmp, () if device_check else _DEVICE_FLAGS)
        _check_optimizer(args)
    if data:
        tokenizer = load_tokenizer(resolve_ref(cfg.model, cfg.toy))
        build_dataset(cfg.dataset, resolve_ref(cfg.dataset.path, cfg.toy), tokenizer, quiet=True)


def _check_optimizer(args: TrainingArguments) -> None:
    """Instantiate the optimizer ``args`` selects on one dummy parameter: its own argument checks run."""
    from transformers import Trainer

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


def prepare_resume(trainer: ObjectiveTrainer, run: RunDir) -> Path | None:
    """The checkpoint to resume from (None: start afresh), with the run directory made consistent with it.

    Collective: all processes call it. Rank 0 removes what a killed attempt left after the resume point
    (torn checkpoints, log lines) once every process has chosen the checkpoint; all restore its counters.
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
        CheckpointCounters.restore(trainer, checkpoint)
    trainer.accelerator.wait_for_everyone()
    return checkpoint


def compute_summary(
    cfg: RunConfig,
    run: RunDir,
    trainer: ObjectiveTrainer,
    result: Any,
    data_stats: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """Compute accounting of the finished run (``train/summary.json``; the report's compute table reads it).

    ``result`` is ``Trainer.train``'s ``TrainOutput``; ``started`` the ``time.time()`` the recipe began at.
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
