"""The frozen reference model of objectives anchored to it (``asft``: DFT + alpha KL(pi_ref || pi)).

The reference is the run's base model: the same ``cfg.model`` the policy starts from, loaded once more in
the same dtype and attention implementation (``model.load_reference``), in ``eval()`` (no dropout), with
``requires_grad_(False)``, never handed to the optimizer or to accelerate. Every micro-batch runs its
forward under ``torch.no_grad()`` on exactly the policy's inputs (``input_ids``, ``attention_mask``,
``position_ids``: packed rows keep their example boundaries), so position t of the reference sees the
context position t of the policy sees. On the fused path the reference's LM head hands back its input
(``fused.reference_head``): the reference's ``[B, T, H]`` final hidden states, turned into logits tile by
tile beside the policy's; on the logits path its ``[B, T, V]`` logits.

With LoRA there is no second copy: the reference is the policy itself with its adapters disabled
(peft's ``disable_adapter()``, switched to ``eval()`` for that forward and back), which is exactly the
frozen base the adapters started from.

Memory: a second copy of the model's weights (none with LoRA) and one inference forward per micro-batch
(no activations are kept for a backward; its output is ``[B, T, H]`` on the fused path, ``[B, T, V]``
on the logits path). Time: about one more forward per micro-batch, a third of a training step's compute.

Gradient checkpointing concerns only the policy (the reference keeps nothing for a backward). Plain
multi-process training (DDP) works: each process holds its own reference on its device. FSDP and
DeepSpeed are refused (``ObjectiveTrainer``): the reference would be an unsharded copy per process (and
ZeRO-3 would partition it at load time, outside any engine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from harness.training import fused

# Batch keys that are no forward arguments (the trainer pops them before the policy's forward too).
_NOT_INPUTS = ("labels", "shift_labels", "num_items_in_batch")


def _peft_model(model: nn.Module) -> nn.Module | None:
    """The PEFT model inside ``model`` (through DDP ``.module`` / ``torch.compile`` wrappers), or None."""
    m: Any = model
    for _ in range(8):
        if callable(getattr(m, "disable_adapter", None)) and callable(getattr(m, "get_base_model", None)):
            return m
        inner = getattr(m, "module", None)
        inner = inner if isinstance(inner, nn.Module) else getattr(m, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return None
        m = inner
    return None


class ReferenceModel:
    """The frozen reference: a separately loaded model, or (``model=None``) the policy with its LoRA
    adapters disabled. ``logits`` / ``head`` run its forward on a batch under ``torch.no_grad()`` and
    ``autocast()`` (the trainer passes accelerate's, so mixed precision treats both models alike)."""

    def __init__(self, model: nn.Module | None, autocast: Callable[[], AbstractContextManager] | None = None):
        if model is not None:
            model.eval()
            model.requires_grad_(False)
        self.model = model
        self.autocast = autocast or nullcontext

    @classmethod
    def for_policy(
        cls,
        policy: nn.Module,
        model: nn.Module | None,
        objective: str,
        autocast: Callable[[], AbstractContextManager] | None = None,
    ) -> ReferenceModel:
        """The reference of ``policy``: ``model`` if given, else the policy with its adapters disabled; a
        policy without adapters and no ``model`` is a one-line ``ValueError``."""
        if model is None and _peft_model(policy) is None:
            raise ValueError(
                f"objective {objective!r} needs the frozen reference model: pass reference_model= (the base "
                "model, loaded once more) or train LoRA adapters (the reference is then the adapter-free base)"
            )
        return cls(model, autocast)

    @contextmanager
    def _frozen(self, policy: nn.Module, device: torch.device) -> Iterator[nn.Module]:
        """The reference module, ready for a no-grad forward on ``device``."""
        with torch.no_grad(), self.autocast():
            if self.model is not None:
                here = next(self.model.parameters()).device
                if getattr(self.model, "hf_device_map", None) is None and here != device:
                    self.model.to(device)  # once: where the trainer put the policy
                yield self.model
                return
            peft_model = _peft_model(policy)
            was_training = peft_model.training
            peft_model.eval()
            try:
                with peft_model.disable_adapter():
                    yield peft_model
            finally:
                peft_model.train(was_training)

    @staticmethod
    def _inputs(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], torch.device]:
        kwargs = {k: v for k, v in inputs.items() if k not in _NOT_INPUTS}
        kwargs["use_cache"] = False
        ids = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        return kwargs, ids.device

    def logits(self, policy: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
        """The reference's logits ``[B, T, V]`` on ``inputs`` (the logits path)."""
        kwargs, device = self._inputs(inputs)
        with self._frozen(policy, device) as model:
            return model(**kwargs).logits

    def head(self, policy: nn.Module, inputs: Mapping[str, Any]) -> fused.ReferenceHead:
        """The reference's final hidden states ``[B, T, H]`` and LM head on ``inputs`` (the fused path)."""
        kwargs, device = self._inputs(inputs)
        with self._frozen(policy, device) as model:
            return fused.reference_head(model, kwargs)

    def parameters(self) -> list[nn.Parameter]:
        """The separately loaded reference's parameters (none for an adapter-disabled policy)."""
        return [] if self.model is None else list(self.model.parameters())


__all__ = ["ReferenceModel"]
