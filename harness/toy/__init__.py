"""The toy world: the model organism on which the whole harness runs end to end, offline, on a CPU.

``build(ToyConfig())`` generates three domains of tasks (train / val / test_id / test_ood JSONL):
math (GSM8K-style word problems), code (CRUXEval-style output prediction, HumanEval-style function
writing) and reasoning (ARC-style multiple choice, BBH-style navigate); trains a byte-level
BPE tokenizer, pre-trains a tiny Llama-type base model on a mixed corpus of all three and renders
lm-eval task YAMLs pointing at the files. Everything is an ordinary artefact (JSONL files, an HF model
directory), so the same code path serves real models and datasets: a ``toy:`` reference is resolved to a
local path and passed to ``from_pretrained`` / ``load_dataset`` like any other.

References understood by :func:`resolve`: ``toy:base``, ``toy:tasks``, ``toy:<dataset>/<split>`` (datasets: ``math``,
``code_output``, ``code_function``, ``reasoning_mc``, ``reasoning_logic``; splits: ``train``, ``val``,
``test_id``, ``test_ood``).
"""

from __future__ import annotations

from ..config.toy import (
    DOMAINS,
    GENERATOR_VERSION,
    PREFIX,
    PROMPT,
    SPLITS,
    ToyConfig,
    ToyModelConfig,
    ToyPretrainConfig,
    datasets,
    is_toy_ref,
    valid_refs,
    world_hash,
)
from .world import ToyWorld, build

__all__ = [
    "DOMAINS",
    "GENERATOR_VERSION",
    "PREFIX",
    "PROMPT",
    "SPLITS",
    "ToyConfig",
    "ToyModelConfig",
    "ToyPretrainConfig",
    "ToyWorld",
    "build",
    "datasets",
    "dataset_config",
    "is_toy_ref",
    "resolve",
    "valid_refs",
    "world_hash",
]


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
    dataset, split = ref[len(PREFIX) :].split("/")
    return str(world.data_file(dataset, split))


def dataset_config(dataset: str = "math", split: str = "train", **overrides) -> dict:
    """The ``dataset:`` block that fine-tunes on a toy split with exactly the prompt the toy lm-eval tasks use."""
    return {
        "path": f"toy:{dataset}/{split}",
        "prompt_field": "question",
        "response_field": "answer",
        "prompt_format": PROMPT.replace("{question}", "{prompt}"),
        **overrides,
    }
