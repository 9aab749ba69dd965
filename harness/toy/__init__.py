"""The toy world: the model organism on which the whole harness runs end to end, offline, on a CPU.

``build(ToyConfig())`` generates GSM8K-style math tasks (train / test_id / test_ood JSONL), trains a
byte-level BPE tokenizer, pre-trains a tiny Llama-type base model on a mixed corpus and renders lm-eval
task YAMLs pointing at the files. Everything is an ordinary artefact (JSONL files, an HF model
directory), so the same code path serves real models and datasets: a ``toy:`` reference is resolved to a
local path and passed to ``from_pretrained`` / ``load_dataset`` like any other.

References understood by :func:`resolve`: ``toy:base``, ``toy:tasks``, ``toy:<domain>/<split>``.
"""

from __future__ import annotations

from .config import GENERATOR_VERSION, PROMPT, ToyConfig, ToyModelConfig, ToyPretrainConfig, world_hash
from .world import DOMAINS, SPLITS, ToyWorld, build

__all__ = [
    "DOMAINS",
    "GENERATOR_VERSION",
    "PROMPT",
    "SPLITS",
    "ToyConfig",
    "ToyModelConfig",
    "ToyPretrainConfig",
    "ToyWorld",
    "build",
    "dataset_config",
    "is_toy_ref",
    "resolve",
    "valid_refs",
    "world_hash",
]

PREFIX = "toy:"


def is_toy_ref(ref: str) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def valid_refs(cfg: ToyConfig) -> list[str]:
    return ["toy:base", "toy:tasks"] + [f"toy:{d}/{s}" for d in cfg.domains for s in SPLITS]


def resolve(ref: str, cfg: ToyConfig) -> str:
    """``toy:base`` -> base model dir, ``toy:tasks`` -> rendered task dir, ``toy:math/train`` -> JSONL path
    (building the world if needed); any non-toy string is returned unchanged."""
    if not is_toy_ref(ref):
        return ref
    if ref not in valid_refs(cfg):
        raise ValueError(f"unknown toy reference {ref!r}; valid: {', '.join(valid_refs(cfg))}")
    world = build(cfg)
    if ref == "toy:base":
        return str(world.base_model)
    if ref == "toy:tasks":
        return str(world.tasks_dir)
    domain, split = ref[len(PREFIX) :].split("/")
    return str(world.data_file(domain, split))


def dataset_config(domain: str = "math", split: str = "train", **overrides) -> dict:
    """The ``dataset:`` block that fine-tunes on a toy split with exactly the prompt the toy lm-eval tasks use."""
    return {
        "path": f"toy:{domain}/{split}",
        "prompt_field": "question",
        "response_field": "answer",
        "prompt_format": PROMPT.replace("{question}", "{prompt}"),
        **overrides,
    }
