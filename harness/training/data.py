"""SFT data: load a Hub name or a local file, render (prompt, response) text, tokenize, mask the prompt.

Three ways to get (prompt, response) from an example:

* ``template: plain`` (default): ``prompt_format`` / ``response_format`` around two fields;
* ``template: chat``: the prompt field becomes one user message rendered with the chat template;
* ``messages_field``: a conversation (list of ``{role, content}``); the prompt is every message before the
  LAST assistant message, rendered with the chat template and its generation prompt; the response is that
  assistant message's content. Only the last assistant turn carries loss.

A chat-rendered prompt is tokenized exactly as rendered (no extra special tokens: chat templates write
their own BOS), a plain prompt gets the tokenizer's special tokens. ``chat_template`` replaces the
tokenizer's template (base models often have none); it is saved with the fine-tuned model.

Contract of a tokenized example: ``input_ids`` (prompt + response + EOS, truncated to ``max_length``) and
``labels`` of the same length, equal to ``input_ids`` on response tokens and -100 on prompt tokens —
the Hugging Face convention (unshifted; a causal LM predicts ``labels[t+1]`` from position ``t``).
The collator adds ``shift_labels`` (labels aligned with the logits) for the objectives.

Validation happens here, before any model is loaded, and every problem is one ``ConfigError`` line naming
the file, the field, the example index (or byte offset) and what to do: a file that is not UTF-8, not JSON
or not the format its suffix says (``datacheck``), a split the dataset does not have, an empty dataset, a
missing field, a null or empty response, a dict or list where text is expected, a conversation without an
assistant turn, a chat template that fails to render, and examples left without any response token by
truncation to ``max_length`` (they would train on nothing).

Packing (``packing: true``) is padding-free: ``PackingCollator`` concatenates a micro-batch into one row
with ``position_ids`` restarting at 0 for every example and no attention mask (transformers'
``DataCollatorWithFlattening``). Models built on transformers' mask utilities (Llama, Qwen2/3, Gemma, ...)
derive a block-diagonal causal mask from those position ids, so attention never crosses examples, and
every per-token objective sees exactly the tokens and targets it would see unpacked. The first token of
each example carries no target from the previous one. ``loss_normalization: sequences`` is refused with
packing (it needs per-example rows).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorWithFlattening

from harness.config import LOCAL_DATA_SUFFIXES, ConfigError, DatasetConfig
from harness.training.datacheck import check_file

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# datasets' builder for each local file suffix
_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
assert set(_LOCAL_FORMATS) == LOCAL_DATA_SUFFIXES


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars and no log records from ``datasets`` inside the block (restored after): a check
    that fails must end in its one line, not after a progress bar and a logged copy of the error."""
    import datasets

    bars_off = not datasets.is_progress_bar_enabled()
    logger = logging.getLogger("datasets")
    level = logger.level
    datasets.disable_progress_bars()
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)
        if not bars_off:
            datasets.enable_progress_bars()


def _root_message(e: BaseException) -> str:
    """The first line of the innermost cause (``datasets`` wraps the real error in a generic one)."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def load_raw(cfg: DatasetConfig, path: str):
    """Load the split as a ``datasets.Dataset``. ``path`` is ``cfg.path`` with any toy ref resolved.

    A local file is checked first (``datacheck.check_file``); whatever ``datasets`` still raises becomes
    one ``ConfigError`` line: a split the dataset does not have names ``dataset.split``, anything else
    ``dataset.path``.
    """
    import datasets

    suffix = Path(path).suffix.lower()
    try:
        if suffix in _LOCAL_FORMATS:
            check_file(path)  # datasets fails on an empty file with a bare StopIteration, and worse
            with quiet_datasets():
                ds = datasets.load_dataset(
                    _LOCAL_FORMATS[suffix], data_files={cfg.split: path}, split=cfg.split
                )
        else:
            with quiet_datasets():
                ds = datasets.load_dataset(path, cfg.name, split=cfg.split)
    except ConfigError:
        raise
    except Exception as e:  # datasets' errors: DatasetNotFoundError, DatasetGenerationError, ValueError, ...
        message = _root_message(e)
        if "split" in message.lower() and cfg.split not in ("", None) and "unknown split" in message.lower():
            raise ConfigError(
                f"dataset.split: '{cfg.split}' is not a split of {path} ({message}); set dataset.split to one"
            ) from None
        raise ConfigError(
            f"dataset.path: {path} could not be read ({type(e).__name__}: {message}); check the name, or that "
            f"the file is valid {_LOCAL_FORMATS.get(suffix, 'data')}"
        ) from None
    if cfg.max_examples is not None:
        ds = ds.select(range(min(cfg.max_examples, len(ds))))
    return ds


def _missing(field: str, key: str, example: dict[str, Any], index: int) -> ConfigError:
    return ConfigError(
        f"dataset.{key}: example {index} has no field '{field}' (fields: {', '.join(sorted(example))})"
    )


def _render_messages(example: dict[str, Any], cfg: DatasetConfig, tokenizer, index: int) -> tuple[str, str]:
    field = cfg.messages_field
    if field not in example:
        raise _missing(field, "messages_field", example, index)
    messages = example[field]
    where = f"dataset.messages_field: example {index} ('{field}')"
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    ):
        raise ConfigError(f"{where}: expected a list of {{role, content}} messages")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        roles = ", ".join(str(m["role"]) for m in messages) or "no messages"
        raise ConfigError(f"{where}: the conversation has no assistant message (roles: {roles})")
    for j, m in enumerate(messages[: last + 1]):
        if m["content"] is not None and not isinstance(m["content"], str):
            raise ConfigError(
                f"{where}: message {j} has a {type(m['content']).__name__} as its content, not text; give "
                "every message a string content"
            )
    response = messages[last]["content"]
    if not isinstance(response, str) or not response.strip():
        raise ConfigError(f"{where}: the last assistant message (message {last}) is empty")
    # Arrow fills keys missing from some messages with None: pass only role and content to the template.
    history = [{"role": m["role"], "content": m["content"] or ""} for m in messages[:last]]
    try:
        prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # a template error (e.g. "roles must alternate") names the example
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"{where}: the chat template failed to render ({first}); fix dataset.chat_template (or the data)"
        ) from None
    return prompt, response


def render(example: dict[str, Any], cfg: DatasetConfig, tokenizer, index: int) -> tuple[str, str]:
    """The (prompt, response) text of one example; errors name the field and the example index."""
    if cfg.messages_field is not None:
        return _render_messages(example, cfg, tokenizer, index)
    for field, key in ((cfg.prompt_field, "prompt_field"), (cfg.response_field, "response_field")):
        if field not in example:
            raise _missing(field, key, example, index)
    # Arrow fills a field missing from some rows with None: that is a missing value, not the text "None".
    if example[cfg.prompt_field] is None:
        raise ConfigError(
            f"dataset.prompt_field: example {index} has no value for '{cfg.prompt_field}' (null)"
        )
    if example[cfg.response_field] is None:
        raise ConfigError(
            f"dataset.response_field: example {index} has no value for '{cfg.response_field}' (null)"
        )
    for field, key in ((cfg.prompt_field, "prompt_field"), (cfg.response_field, "response_field")):
        value = example[field]
        if isinstance(value, dict | list):  # str() would train on its Python repr
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise ConfigError(
                f"dataset.{key}: example {index} has a {type(value).__name__} in '{field}' ({shown}), not text; "
                f"point dataset.{key} at a text field"
                + (" (or use dataset.messages_field for conversations)" if isinstance(value, list) else "")
            )
    if not str(example[cfg.response_field]).strip():
        raise ConfigError(
            f"dataset.response_field: example {index} has an empty '{cfg.response_field}' "
            "(nothing to train on; drop the example)"
        )
    prompt, response = str(example[cfg.prompt_field]), str(example[cfg.response_field])
    if cfg.template == "chat":
        try:
            prompt_text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        except Exception as e:  # a broken template (syntax, a raise_exception in it) names the example
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(
                f"dataset.template: example {index}: the chat template failed to render ({first}); fix "
                "dataset.chat_template (or the tokenizer's)"
            ) from None
        return prompt_text, response
    return cfg.prompt_format.format(prompt=prompt), cfg.response_format.format(response=response)


def uses_chat_template(cfg: DatasetConfig) -> bool:
    return cfg.messages_field is not None or cfg.template == "chat"


def tokenize_example(
    prompt: str, response: str, tokenizer, max_length: int, *, prompt_special_tokens: bool = True
) -> dict[str, Any]:
    """Tokenize prompt and response separately (so the boundary is exact), append EOS, truncate right."""
    # A plain prompt gets the tokenizer's own special tokens (e.g. Llama's BOS), exactly as lm-eval's hf
    # and vllm backends encode a context by default, so training and evaluation see the same prefix. A
    # chat-rendered prompt already contains them (prompt_special_tokens=False).
    prompt_ids = tokenizer(prompt, add_special_tokens=prompt_special_tokens)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "truncated": len(prompt_ids) + len(response_ids) > max_length,
    }


def load_checked(cfg: DatasetConfig, path: str, tokenizer) -> tuple[Any, bool]:
    """The raw training set (``load_raw``) after the checks every consumer needs before its per-example map:
    a chat template where one is used, at least one example, the configured columns. Returns ``(raw,
    chat)`` (``chat``: conversations go through the tokenizer's chat template). Sets ``cfg.chat_template``
    on ``tokenizer`` when given. Each problem is one ``ConfigError`` line naming the field."""
    if cfg.chat_template is not None:
        tokenizer.chat_template = cfg.chat_template
    chat = uses_chat_template(cfg)
    if chat and not getattr(tokenizer, "chat_template", None):
        key = "messages_field" if cfg.messages_field is not None else "template"
        raise ConfigError(
            f"dataset.{key}: the tokenizer has no chat template; set dataset.chat_template to a Jinja template"
        )
    raw = load_raw(cfg, path)
    if len(raw) == 0:
        raise ConfigError(
            f"dataset.path: {path} (split '{cfg.split}') has no examples; point dataset.path at the data"
        )
    # Fail on a missing column before anything is mapped (per-example checks follow in the map).
    needed = (
        [(cfg.messages_field, "messages_field")]
        if cfg.messages_field is not None
        else [(cfg.prompt_field, "prompt_field"), (cfg.response_field, "response_field")]
    )
    for field, key in needed:
        if field not in raw.column_names:
            raise _missing(field, key, raw[0], 0)
    return raw, chat


def build_dataset(
    cfg: DatasetConfig, path: str, tokenizer, stats: dict[str, Any] | None = None, *, quiet: bool = False
):
    """Load, render and tokenize the training set. Returns a ``datasets.Dataset`` with input_ids/labels.

    ``quiet``: no progress bars or ``datasets`` log records (a pre-flight check whose failure is one line).

    Sets ``cfg.chat_template`` on ``tokenizer`` when given. ``stats``, if given, receives ``num_examples``,
    ``num_truncated`` (examples cut to ``max_length``) and ``num_no_response`` (examples left without any
    response token by truncation; they add nothing to the loss).
    """
    raw, chat = load_checked(cfg, path, tokenizer)

    def _map(example: dict[str, Any], index: int) -> dict[str, Any]:
        prompt, response = render(example, cfg, tokenizer, index)
        return tokenize_example(prompt, response, tokenizer, cfg.max_length, prompt_special_tokens=not chat)

    with quiet_datasets() if quiet else contextlib.nullcontext():
        ds = raw.map(_map, with_indices=True, remove_columns=raw.column_names, desc="tokenize")
    n_trunc = sum(ds["truncated"])
    empty = [i for i, labels in enumerate(ds["labels"]) if all(x == IGNORE_INDEX for x in labels)]
    n_empty = len(empty)
    log.info("dataset: %d examples, %d truncated to %d tokens", len(ds), n_trunc, cfg.max_length)
    if empty and (len(empty) == len(ds) or not cfg.drop_all_prompt):
        # They would add nothing to the loss: data lost without a word, unless the user said to drop them.
        more = f" (and {n_empty - 1} more)" if n_empty > 1 else ""
        raise ConfigError(
            f"dataset.max_length: example {empty[0]}{more} of {path} is all prompt after truncation to "
            f"{cfg.max_length} tokens (no response token left to train on); raise dataset.max_length or "
            "set dataset.drop_all_prompt: true to drop such examples"
        )
    if empty:
        log.warning("dataset: dropped %d examples left without a response token (drop_all_prompt)", n_empty)
        drop = set(empty)
        ds = ds.select([i for i in range(len(ds)) if i not in drop])
    if stats is not None:
        stats.update(num_examples=len(ds), num_truncated=n_trunc, num_no_response=n_empty)
    return ds.remove_columns("truncated")


class PackingCollator:
    """Padding-free packing: one row per micro-batch, ``position_ids`` restarting per example, no padding.

    ``shift_labels[0, t]`` is the target of position ``t``; the last token of each example has none (the
    collator puts -100 at every example's first label, so nothing predicts across a boundary).
    """

    def __init__(self) -> None:
        self._flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        labels = batch["labels"]
        shift_labels = torch.full_like(labels, IGNORE_INDEX)
        shift_labels[:, :-1] = labels[:, 1:]
        return {
            "input_ids": batch["input_ids"],
            "position_ids": batch["position_ids"],
            "labels": labels,
            "shift_labels": shift_labels,
        }


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
