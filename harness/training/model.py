"""The model of a run: loaded as the config asks (dtype, attention, LoRA), and saved at the end.

LoRA (``lora:``): only the adapters train and are checkpointed; at the end the adapter is saved to
``train/adapter/`` and merged into a fresh copy of the base for ``train/final/``, a plain HF model
directory (lm-eval's ``hf`` backend and vLLM load it without peft).

Reference objectives (``asft``): ``load_reference`` loads the frozen base once more beside the policy
(not with LoRA: the policy with its adapters disabled is the base); ``reference.py`` runs it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, Trainer

from harness.config import ConfigError, RunConfig
from harness.objectives import needs_reference
from harness.runs.layout import RunDir
from harness.toy import resolve as resolve_ref

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def load_model(cfg: RunConfig, model_path: str):
    """The base model as the config asks for it (dtype, attention implementation)."""
    kwargs: dict[str, Any] = {"dtype": _DTYPES[cfg.model_dtype]}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    return AutoModelForCausalLM.from_pretrained(model_path, **kwargs)


def load_reference(cfg: RunConfig, model_path: str):
    """The frozen reference model of an objective that needs one (``asft``): the run's base model loaded
    once more, exactly as the policy was (same path, dtype, attention), ``eval()``, no gradients.

    ``None`` when the objective needs no reference, and with LoRA, whose reference is the policy with its
    adapters disabled (no second copy of the weights). Costs a second copy of the weights on every
    process (``training/reference.py``).
    """
    if cfg.objective is None or not needs_reference(cfg.objective.name) or cfg.lora is not None:
        return None
    reference = load_model(cfg, model_path)
    reference.eval()
    reference.requires_grad_(False)
    log.info("objective %s: frozen reference model loaded from %s", cfg.objective.name, model_path)
    return reference


def add_lora(cfg: RunConfig, model):
    """Wrap ``model`` with trainable LoRA adapters (peft); every other weight is frozen.

    Raises ``ConfigError`` naming the model's linear layers when ``lora.target_modules`` matches none.
    """
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


def _temp_dir(final: Path) -> Path:
    """The fixed temp directory that becomes ``final``: ``.<name>.tmp`` beside it.

    Not ``runs.io.atomic_dir``'s random name: every process of a sharded run must pass the same directory
    to ``save_model``. The pattern is the one ``runs.io.remove_stale_temps`` cleans up after a kill.
    """
    return final.with_name(f".{final.name}.tmp")


def save_final(trainer: Trainer, cfg: RunConfig, run: RunDir) -> None:
    """Write ``train/final/`` (and ``train/adapter/`` for LoRA) atomically. Collective: all processes call it
    (FSDP/DeepSpeed gather the weights inside ``save_model``); only the main process writes."""
    main = trainer.is_world_process_zero()
    tmp = _temp_dir(run.final_model)
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # the whole model, or only the adapter for a peft model
    if main:
        if cfg.lora is not None:
            # Merge into a fresh copy of the base loaded from disk: works whatever sharding trained it.
            from peft import PeftModel

            adapter_tmp = _temp_dir(run.adapter_dir)
            shutil.rmtree(adapter_tmp, ignore_errors=True)
            os.replace(tmp, adapter_tmp)
            base = load_model(cfg, resolve_ref(cfg.model, cfg.toy))
            merged = PeftModel.from_pretrained(base, str(adapter_tmp)).merge_and_unload()
            merged.save_pretrained(str(tmp))
            shutil.rmtree(run.adapter_dir, ignore_errors=True)
            os.replace(adapter_tmp, run.adapter_dir)
        trainer.processing_class.save_pretrained(str(tmp))
        if run.final_model.exists():
            shutil.rmtree(run.final_model)
        os.replace(tmp, run.final_model)
    trainer.accelerator.wait_for_everyone()
