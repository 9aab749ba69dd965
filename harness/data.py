"""SFT data: load a Hub name or a local file, render (prompt, response) text, tokenize, mask the prompt.

Contract of a tokenized example: ``input_ids`` (prompt + response + EOS, truncated to ``max_length``) and
``labels`` of the same length, equal to ``input_ids`` on response tokens and -100 on prompt tokens —
the Hugging Face convention (unshifted; a causal LM predicts ``labels[t+1]`` from position ``t``).
The collator adds ``shift_labels`` (labels aligned with the logits) for the objectives.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from harness.config import LOCAL_DATA_SUFFIXES, ConfigError, DatasetConfig

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# datasets' builder for each local file suffix
_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
assert set(_LOCAL_FORMATS) == LOCAL_DATA_SUFFIXES


def load_raw(cfg: DatasetConfig, path: str):
    """Load the split as a ``datasets.Dataset``. ``path`` is ``cfg.path`` with any toy ref resolved."""
    import datasets

    suffix = Path(path).suffix.lower()
    if suffix in _LOCAL_FORMATS:
        if not Path(path).is_file():
            raise ConfigError(f"dataset.path: file not found: {path}")
        ds = datasets.load_dataset(_LOCAL_FORMATS[suffix], data_files={cfg.split: path}, split=cfg.split)
    else:
        ds = datasets.load_dataset(path, cfg.name, split=cfg.split)
    if cfg.max_examples is not None:
        ds = ds.select(range(min(cfg.max_examples, len(ds))))
    return ds


def render(example: dict[str, Any], cfg: DatasetConfig, tokenizer, index: int) -> tuple[str, str]:
    """The (prompt, response) text of one example; errors name the field and the example index."""
    for field in (cfg.prompt_field, cfg.response_field):
        if field not in example:
            raise ConfigError(
                f"dataset.{'prompt_field' if field == cfg.prompt_field else 'response_field'}: "
                f"example {index} has no field '{field}' (fields: {', '.join(sorted(example))})"
            )
    prompt, response = str(example[cfg.prompt_field]), str(example[cfg.response_field])
    if not response.strip():
        raise ConfigError(f"dataset.response_field: example {index} has an empty '{cfg.response_field}'")
    if cfg.template == "chat":
        prompt_text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return prompt_text, response
    return cfg.prompt_format.format(prompt=prompt), cfg.response_format.format(response=response)


def tokenize_example(prompt: str, response: str, tokenizer, max_length: int) -> dict[str, Any]:
    """Tokenize prompt and response separately (so the boundary is exact), append EOS, truncate right."""
    # The prompt gets the tokenizer's own special tokens (e.g. Llama's BOS), exactly as lm-eval's hf and
    # vllm backends encode a context by default, so training and evaluation see the same prefix.
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "truncated": len(prompt_ids) + len(response_ids) > max_length,
    }


def build_dataset(cfg: DatasetConfig, path: str, tokenizer):
    """Load, render and tokenize the training set. Returns a ``datasets.Dataset`` with input_ids/labels."""
    raw = load_raw(cfg, path)
    if len(raw) == 0:
        raise ConfigError(f"dataset.path: {path} (split '{cfg.split}') has no examples")

    def _map(example: dict[str, Any], index: int) -> dict[str, Any]:
        prompt, response = render(example, cfg, tokenizer, index)
        return tokenize_example(prompt, response, tokenizer, cfg.max_length)

    ds = raw.map(_map, with_indices=True, remove_columns=raw.column_names, desc="tokenize")
    n_trunc = sum(ds["truncated"])
    n_empty = sum(1 for labels in ds["labels"] if all(x == IGNORE_INDEX for x in labels))
    log.info("dataset: %d examples, %d truncated to %d tokens", len(ds), n_trunc, cfg.max_length)
    if n_empty:
        log.warning("dataset: %d examples lost every response token to truncation", n_empty)
    return ds.remove_columns("truncated")


class Collator:
    """Right-pad a list of examples; add ``shift_labels`` (labels[:, t] = target of logits[:, t])."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), length), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            attention_mask[i, :n] = 1
        shift_labels = torch.full_like(labels, IGNORE_INDEX)
        shift_labels[:, :-1] = labels[:, 1:]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "shift_labels": shift_labels,
        }
