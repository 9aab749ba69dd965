"""GRPO runs: TRL's ``GRPOTrainer`` as a method of the harness (``objective: {name: grpo, ...}``).

``train(cfg, run)`` is ``recipe.train`` for a method whose trainer is TRL's, not a token-level objective,
and reads top to bottom as the same phases: resolve refs -> ``GRPOConfig`` (the run's ``training:``
block, TrainingArguments names, plus the objective's GRPO parameters) -> tokenizer and prompts
(validated before any model is loaded) -> model (+ LoRA) -> ``HarnessGRPOTrainer`` with the reward ->
resume from the last complete checkpoint -> train -> save the final model -> write the summary. The run
directory, ``train/metrics.jsonl`` (one line per log step: TRL's ``reward``, ``reward_std``,
``rewards/<fn>/mean``, ``completions/mean_length``, ``kl`` when ``beta > 0``, ``entropy``, ... plus the
harness's ``tokens``, ``generated_tokens``, ``peak_memory_mb``), the checkpoints (complete once
``harness_counters.json`` is in them), the final model and ``summary.json`` are those of every run, so
evaluation and the report need nothing special.

Data: the prompt side of the run's dataset, rendered exactly as the SFT runs render it (``data.render``:
``prompt_format`` for plain data; for ``template: chat`` / ``messages_field`` the conversation, which TRL
renders with the same chat template and generation prompt), and the reference answer (the response
field, or the last assistant message) in TRL's ``solution`` column for the reward (``rewards.py``).
Prompts are not truncated (``dataset.max_length`` is the SFT runs' prompt + response budget; here the
completion budget is ``objective.max_completion_length``).

Determinism: the run is a function of its seed; a run killed after checkpoint c and resumed reaches the
same weights as an uninterrupted one (``grpo_trainer.py``: per-epoch data order; transformers restores
the RNG that generation draws from). A generation batch must not straddle a checkpoint, so with
``num_iterations > 1`` ``save_steps`` must be a multiple of it (checked before the run).

TRL is optional (``pip install 'otr-harness[trl]'``): this module imports it only inside the functions
that need it, and ``require_trl`` fails first, in one line, where it is missing.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import tempfile
import time
from typing import Any

from transformers import set_seed

from harness.config import ConfigError, DatasetConfig, RunConfig
from harness.objectives.params import GRPOParams, validate_params
from harness.runs.io import atomic_write_json
from harness.runs.layout import RunDir
from harness.toy import resolve as resolve_ref
from harness.training.data import load_checked, quiet_datasets, render
from harness.training.model import add_lora, load_model, save_final
from harness.training.phases import (
    DEVICE_FLAGS,
    build_arguments,
    check_optimizer,
    compute_summary,
    load_tokenizer,
    prepare_resume,
)
from harness.training.rewards import (
    check_reward_available,
    reference_problem,
    resolve_reward,
    reward_function,
)
from harness.training.trainer import MetricsLog

log = logging.getLogger(__name__)

TRL_INSTALL = "pip install 'otr-harness[trl]'"
TRL_RANGE = ((1, 16), (2, 0))  # pyproject's trl>=1.16,<2
# GRPOParams fields that are the harness's own; every other one is the GRPOConfig field of that name.
_HARNESS_ONLY = {"reward"}


def _training_defaults(cfg: RunConfig) -> dict[str, Any]:
    """TrainingArguments' values where TRL's GRPOConfig defaults differ (bf16 mixed precision, gradient
    checkpointing on), so a GRPO run trains with the recipe of the other methods unless ``training:`` says
    otherwise. Checkpointing is set through its current name, ``activation_checkpointing`` (which outranks
    the deprecated ``gradient_checkpointing``), and only when the run sets neither."""
    defaults: dict[str, Any] = {"bf16": False}
    if not {"gradient_checkpointing", "activation_checkpointing"} & set(cfg.training):
        defaults["activation_checkpointing"] = False
    return defaults


def require_trl() -> None:
    """``ConfigError`` naming the install command when TRL is missing or outside the supported range."""
    if importlib.util.find_spec("trl") is None:
        raise ConfigError(f"objective 'grpo' runs TRL's GRPOTrainer, and TRL is not installed: {TRL_INSTALL}")
    version = importlib.metadata.version("trl")
    major_minor = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
    if not TRL_RANGE[0] <= major_minor < TRL_RANGE[1]:
        raise ConfigError(f"objective 'grpo' needs trl>=1.16,<2 (installed: {version}): {TRL_INSTALL}")


def check_vllm(cfg: RunConfig) -> None:
    """``use_vllm: true`` needs vLLM in this interpreter (TRL generates through it in-process or as a
    server client); one ``ConfigError`` line otherwise."""
    if grpo_params(cfg).use_vllm and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "objective.use_vllm: vLLM is not installed in this environment (pip install vllm on the GPU node); "
            "or set use_vllm: false to generate with transformers"
        )


def grpo_params(cfg: RunConfig) -> GRPOParams:
    """The run's GRPO parameters with TRL's defaults filled in."""
    assert cfg.objective is not None
    prm = validate_params(cfg.objective.name, cfg.objective.params)
    assert isinstance(prm, GRPOParams)
    return prm


def reward_name(cfg: RunConfig) -> str:
    """The run's reward, ``auto`` resolved against its dataset."""
    assert cfg.dataset is not None
    return resolve_reward(grpo_params(cfg).reward, cfg.dataset.path)


def grpo_arguments(cfg: RunConfig, output_dir: str, drop: tuple[str, ...] = (), **override: Any):
    """TRL's ``GRPOConfig`` of this run: ``training:`` (TrainingArguments names; the harness's recipe
    defaults) + the objective's GRPO fields. ``override``: values over both (preflight only)."""
    from trl import GRPOConfig

    prm = grpo_params(cfg)
    fields = {k: v for k, v in prm.model_dump().items() if k not in _HARNESS_ONLY}
    return build_arguments(
        cfg,
        output_dir,
        drop,
        args_class=GRPOConfig,
        defaults=_training_defaults(cfg),
        extra={**fields, "log_completions": False, **override},
        where="training/objective (grpo)",
    )


# ------------------------------------------------------------------------------------------------ data
def build_prompts(
    cfg: DatasetConfig, path: str, tokenizer, reward: str, stats: dict[str, Any] | None = None, *, quiet=False
):
    """The GRPO training set: a ``datasets.Dataset`` with ``prompt`` and ``solution`` columns.

    ``prompt``: the text the SFT runs condition on (``prompt_format`` applied), or, with a chat template,
    the conversation before the response (TRL applies the template with its generation prompt, as
    ``data.render`` does). ``solution``: the raw reference (response field or last assistant message).
    Every problem is one ``ConfigError`` line naming the field and the example, as for SFT data, and a
    reference the reward cannot score (``toy`` without ``#### N``) is one too.
    """
    raw, chat = load_checked(cfg, path, tokenizer)

    def _map(example: dict[str, Any], index: int) -> dict[str, Any]:
        prompt, _ = render(example, cfg, tokenizer, index)  # validates the example as for SFT
        if cfg.messages_field is not None:
            messages = example[cfg.messages_field]
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            conversation = [{"role": m["role"], "content": m["content"] or ""} for m in messages[:last]]
            reference, key = str(messages[last]["content"]), "messages_field"
        else:
            conversation = [{"role": "user", "content": str(example[cfg.prompt_field])}]
            reference, key = str(example[cfg.response_field]), "response_field"
        problem = reference_problem(reward, reference)
        if problem:
            raise ConfigError(f"dataset.{key}: example {index} {problem}")
        return {"prompt": conversation if chat else prompt, "solution": reference}

    with quiet_datasets() if quiet else contextlib.nullcontext():
        ds = raw.map(_map, with_indices=True, remove_columns=raw.column_names, desc="prompts")
    if stats is not None:  # nothing is truncated or dropped: the prompts are used whole
        stats.update(num_examples=len(ds), num_truncated=0, num_no_response=0)
    log.info("dataset: %d prompts, reward %s", len(ds), reward)
    return ds


# ------------------------------------------------------------------------------------------- preflight
def _processes(cfg: RunConfig) -> int | None:
    """Processes of the run (1 without a launcher; None when the accelerate config file decides)."""
    if cfg.launcher is None:
        return 1
    return cfg.launcher.num_processes


def check_config(cfg: RunConfig) -> None:
    """The GRPO-specific rules, as one ``ConfigError`` line naming the field (no TRL import)."""
    assert cfg.dataset is not None
    prm = grpo_params(cfg)
    if cfg.dataset.packing:
        raise ConfigError(
            "dataset.packing: GRPO trains on generated completions, not packed examples; remove it"
        )
    if cfg.loss_normalization != "tokens":
        raise ConfigError(
            "loss_normalization: applies to the token-level objectives; GRPO normalises as objective.loss_type "
            "says (TRL's); remove it"
        )
    args = cfg.training_arguments()
    per_step = int(args.get("per_device_train_batch_size", 8)) * int(
        args.get("gradient_accumulation_steps", 1)
    )
    processes = _processes(cfg)
    if processes is not None and (per_step * processes) % prm.num_generations:
        raise ConfigError(
            f"objective.num_generations: {prm.num_generations} must divide the completions per optimizer step, "
            f"training.per_device_train_batch_size x gradient_accumulation_steps x processes = {per_step * processes} "
            "(batch sizes count completions, as in TRL); change one of them"
        )
    save_steps = args.get("save_steps", 500)
    if (
        prm.num_iterations > 1
        and args.get("save_strategy") == "steps"
        and isinstance(save_steps, int)
        and save_steps % prm.num_iterations
    ):
        raise ConfigError(
            f"training.save_steps: {save_steps} must be a multiple of objective.num_iterations "
            f"({prm.num_iterations}), so that no generation batch straddles a checkpoint (a resumed run would "
            "generate it again, differently)"
        )


def preflight(cfg: RunConfig, *, data: bool = True, device_check: bool = True) -> None:
    """``recipe.preflight`` for a GRPO run: TRL and the reward's library installed, the GRPO rules, the full
    ``GRPOConfig`` (TRL's own checks) and optimizer, and (``data``) the prompts with their references."""
    assert cfg.dataset is not None
    require_trl()
    reward = reward_name(cfg)
    check_reward_available(reward)
    check_config(cfg)
    if device_check:  # where the run executes elsewhere (SLURM), its node may have vLLM and this one not
        check_vllm(cfg)
    # GRPOConfig checks the generation batch against this process's world size (1 here): give it the
    # global batch of the run's processes, which check_config has already checked.
    per_device = int(cfg.training_arguments().get("per_device_train_batch_size", 8))
    override = {"per_device_train_batch_size": per_device * (_processes(cfg) or 1)}
    with tempfile.TemporaryDirectory(prefix="otr-harness-preflight-") as tmp:
        args = grpo_arguments(cfg, tmp, () if device_check else DEVICE_FLAGS, **override)
        check_optimizer(args)
    if data:
        tokenizer = load_tokenizer(resolve_ref(cfg.model, cfg.toy))
        build_prompts(cfg.dataset, resolve_ref(cfg.dataset.path, cfg.toy), tokenizer, reward, quiet=True)


# ----------------------------------------------------------------------------------------------- train
def train(cfg: RunConfig, run: RunDir) -> dict[str, Any] | None:
    """Train ``cfg.model`` with GRPO on the prompts of ``cfg.dataset``; write into ``run`` as every run does.

    Returns the summary on the main process, ``None`` on the others of a multi-process run.
    """
    assert cfg.dataset is not None and cfg.objective is not None
    started = time.time()
    require_trl()
    reward = reward_name(cfg)
    check_reward_available(reward)
    check_config(cfg)
    check_vllm(cfg)
    from harness.training.grpo_trainer import GRPOCheckpointCounters, HarnessGRPOTrainer

    set_seed(cfg.seed)
    model_path = resolve_ref(cfg.model, cfg.toy)
    data_path = resolve_ref(cfg.dataset.path, cfg.toy)
    args = grpo_arguments(cfg, str(run.train_dir))
    tokenizer = load_tokenizer(model_path)
    data_stats: dict[str, Any] = {}
    with args.main_process_first(desc="prompts"):
        dataset = build_prompts(cfg.dataset, data_path, tokenizer, reward, data_stats)
    model = load_model(cfg, model_path)
    if cfg.lora is not None:
        model = add_lora(cfg, model)
    trainer = HarnessGRPOTrainer(
        model=model,
        reward_funcs=[reward_function(reward)],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[MetricsLog(run.metrics_file)],
    )
    trainer.add_callback(GRPOCheckpointCounters(trainer))
    checkpoint = prepare_resume(trainer, run, restore=GRPOCheckpointCounters.restore)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.sync_counters()  # the steps after the last log step
    save_final(trainer, cfg, run)
    if not trainer.is_world_process_zero():
        return None
    summary = {**compute_summary(cfg, run, trainer, result, data_stats, started), "reward": reward}
    atomic_write_json(run.summary_file, summary)
    return summary


__all__ = ["build_prompts", "check_config", "grpo_arguments", "preflight", "require_trl", "train"]
