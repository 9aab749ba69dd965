"""The fine-tuning recipe: RunConfig in, fine-tuned checkpoint + metrics log + compute summary out.

``train(cfg, run)`` reads top to bottom as its phases: resolve refs -> training arguments -> tokenizer and
data (validated before any model is loaded) -> model (+ LoRA adapters) -> Trainer with the chosen objective
-> resume (from the last complete checkpoint, if there is one) -> train -> save the final model atomically
-> write the summary. The pieces live beside it: ``trainer`` (the objective inside the Trainer's loss, the
metrics log), ``checkpoints`` (what a resume reads and cleans up), ``model`` (load, LoRA, final save),
``data`` (load, template, tokenize, mask prompts), ``phases`` (arguments, tokenizer, resume point, summary:
shared with ``grpo``, the recipe of GRPO runs, to which ``train`` and ``preflight`` hand them over).

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
import tempfile
import time
from typing import Any

from transformers import TrainingArguments, set_seed

from harness.config import RunConfig
from harness.objectives.params import trainer_of
from harness.runs.io import atomic_write_json
from harness.runs.layout import RunDir
from harness.toy import resolve as resolve_ref
from harness.training.data import Collator, PackingCollator, build_dataset
from harness.training.model import add_lora, load_model, load_reference, save_final
from harness.training.phases import (
    DEVICE_FLAGS,
    build_arguments,
    check_optimizer,
    compute_summary,
    load_tokenizer,
    prepare_resume,
)
from harness.training.trainer import CheckpointCounters, MetricsLog, ObjectiveTrainer

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run: RunDir) -> dict[str, Any] | None:
    """Fine-tune ``cfg.model`` with ``cfg.objective`` on ``cfg.dataset``; write into ``run``.

    Returns the summary on the main process, ``None`` on the others of a multi-process run. A method that
    another trainer runs (``objective: {name: grpo}``: TRL's GRPOTrainer) goes to its own recipe.
    """
    assert cfg.objective is not None, "train() needs an objective"
    if trainer_of(cfg.objective.name) == "grpo":
        from harness.training import grpo  # imports TRL only for GRPO runs

        return grpo.train(cfg, run)
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
    reference = load_reference(cfg, model_path)  # asft's frozen base (None otherwise, and with LoRA)
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
        reference_model=reference,
    )
    trainer.add_callback(CheckpointCounters(trainer))
    return trainer, data_stats


def training_arguments(cfg: RunConfig, run: RunDir) -> TrainingArguments:
    """transformers' arguments of this run; values transformers rejects become a ``ConfigError``."""
    return build_arguments(cfg, str(run.train_dir))


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
    assert cfg.dataset is not None and cfg.objective is not None
    if trainer_of(cfg.objective.name) == "grpo":
        from harness.training import grpo

        return grpo.preflight(cfg, data=data, device_check=device_check)
    with tempfile.TemporaryDirectory(prefix="otr-harness-preflight-") as tmp:
        args = build_arguments(cfg, tmp, () if device_check else DEVICE_FLAGS)
        check_optimizer(args)
    if data:
        tokenizer = load_tokenizer(resolve_ref(cfg.model, cfg.toy))
        build_dataset(cfg.dataset, resolve_ref(cfg.dataset.path, cfg.toy), tokenizer, quiet=True)
