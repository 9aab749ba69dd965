"""Which LM heads the fused path can compute exactly, from the module types and the config.

``causal_lm(model)`` finds the Hugging Face model inside wrappers; ``check_fusable(lm)`` returns its LM
head and soft-cap or raises ``FusedHeadError``, one line naming the model type, the reason and the way out
(logit scaling, sliced vocabularies, non-Linear heads, LoRA / modules_to_save on ``lm_head``).
``fused.py`` patches the heads this accepts and probes their forward once more.
"""

from __future__ import annotations

from typing import Any

from torch import nn

# Config attributes that rescale or slice the logits after the head: refused (value None or 1 = absent).
SCALING_ATTRS = ("logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier")
# Config attributes of a tanh soft-cap after the head (cap * tanh(z / cap)): handled.
SOFTCAP_ATTRS = ("final_logit_softcapping", "logits_soft_cap")
WAY_OUT = "use training_path: logits (or objectives.compute on model(...).logits)"


class FusedHeadError(ValueError):
    """This model's logits cannot be fused exactly. One line: model type, reason, way out."""


def causal_lm(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside ``model``: through DDP / FSDP / DeepSpeed (``.module``),
    ``torch.compile`` (``._orig_mod``) and PEFT (``get_base_model()``) wrappers."""
    from transformers import PreTrainedModel

    m = model
    for _ in range(16):
        if isinstance(m, PreTrainedModel):
            return m
        if callable(getattr(m, "get_base_model", None)):
            m = m.get_base_model()
        elif isinstance(getattr(m, "module", None), nn.Module):
            m = m.module
        elif isinstance(getattr(m, "_orig_mod", None), nn.Module):
            m = m._orig_mod
        else:
            break
    raise FusedHeadError(
        f"fused training path: {type(model).__name__} is not a Hugging Face model; {WAY_OUT}"
    )


def config_value(config: Any, attr: str) -> Any:
    """``attr`` of the config or of its text config (multimodal configs nest it), None if absent."""
    for cfg in (config, config.get_text_config() if hasattr(config, "get_text_config") else None):
        value = getattr(cfg, attr, None) if cfg is not None else None
        if value is not None:
            return value
    return None


def refuse(lm: nn.Module, reason: str) -> FusedHeadError:
    model_type = getattr(getattr(lm, "config", None), "model_type", "?")
    return FusedHeadError(f"fused training path: {model_type} ({type(lm).__name__}) {reason}; {WAY_OUT}")


def check_fusable(lm: nn.Module) -> tuple[nn.Linear, float | None]:
    """The LM head of the causal LM ``lm`` and its soft-cap (None), or ``FusedHeadError`` (one line).

    From the module types and the config only; ``enable_fused_objective`` also probes the forward.
    """
    get_head = getattr(lm, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        raise refuse(lm, "has no LM head (get_output_embeddings() is None)")
    if type(head) is not nn.Linear:
        kind = type(head).__module__.split(".")[0]
        what = " (LoRA or modules_to_save on lm_head)" if kind == "peft" else ""
        raise refuse(lm, f"has an LM head of type {kind}.{type(head).__name__}{what}, not a plain nn.Linear")
    config = getattr(lm, "config", None)
    for attr in SCALING_ATTRS:
        value = config_value(config, attr)
        if value is not None and value != 1:
            raise refuse(lm, f"scales its logits ({attr}={value})")
    unpadded = config_value(config, "unpadded_vocab_size")
    if unpadded is not None and unpadded < head.out_features:
        raise refuse(lm, f"slices its logits (unpadded_vocab_size={unpadded} < {head.out_features})")
    softcap = None
    for attr in SOFTCAP_ATTRS:
        value = config_value(config, attr)
        if value is not None:
            if not (isinstance(value, (int, float)) and value > 0):
                raise refuse(lm, f"has an unsupported {attr}={value!r}")
            softcap = float(value)
            break
    return head, softcap


__all__ = [
    "SCALING_ATTRS",
    "SOFTCAP_ATTRS",
    "WAY_OUT",
    "FusedHeadError",
    "causal_lm",
    "check_fusable",
    "refuse",
]
