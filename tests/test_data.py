"""Data: prompt/response and chat `messages` files become (input_ids, labels) with the prompt masked.

Fast (no training): the toy tokenizer, a few examples written to tmp_path.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from transformers import AutoTokenizer

from harness.config import ConfigError, DatasetConfig, parse_run_config
from harness.training.data import IGNORE_INDEX, build_dataset

# A minimal chat template (the toy tokenizer has none): "<role>content\n" per message.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)

CONVERSATIONS = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 1 + 2?"},
        {"role": "assistant", "content": "3"},
        {"role": "user", "content": "And 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4\n#### 4"},
    ],
    [
        {"role": "user", "content": "Add 5 and 7."},
        {"role": "assistant", "content": "5 + 7 = 12\n#### 12"},
        {"role": "user", "content": "Thanks!"},  # after the last assistant turn: not part of the example
    ],
]
# The prompts the template must render: every message before the LAST assistant one + generation prompt.
EXPECTED_PROMPTS = [
    "<system>Be brief.\n<user>What is 1 + 2?\n<assistant>3\n<user>And 2 + 2?\n<assistant>",
    "<user>Add 5 and 7.\n<assistant>",
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def tok(tiny_toy):
    _, world = tiny_toy
    return AutoTokenizer.from_pretrained(world.base_model)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_messages_mask_exactly_the_rendered_history(tmp_path, tok):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in CONVERSATIONS])
    cfg = DatasetConfig(path=path, messages_field="messages", chat_template=CHAT_TEMPLATE)
    stats: dict = {}
    ds = build_dataset(cfg, path, tok, stats)
    assert len(ds) == 2 and stats == {"num_examples": 2, "num_truncated": 0, "num_no_response": 0}
    assert tok.chat_template == CHAT_TEMPLATE  # set on the tokenizer, so the final model saves it
    for ex, conv, prompt in zip(ds, CONVERSATIONS, EXPECTED_PROMPTS, strict=True):
        answer = [m for m in conv if m["role"] == "assistant"][-1]["content"]
        prompt_ids, response_ids = _ids(tok, prompt), _ids(tok, answer) + [tok.eos_token_id]
        assert ex["input_ids"] == prompt_ids + response_ids
        assert ex["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids


def test_prompt_response_jsonl(tmp_path, tok):
    rows = [{"q": "1 + 2?", "a": "3"}, {"q": "2 + 2?", "a": "4 and some more words"}]
    path = write_jsonl(tmp_path / "pr.jsonl", rows)
    cfg = DatasetConfig(path=path, prompt_field="q", response_field="a", prompt_format="Q: {prompt}\nA:")
    stats: dict = {}
    ds = build_dataset(cfg, path, tok, stats)
    for ex, row in zip(ds, rows, strict=True):
        prompt_ids = tok(f"Q: {row['q']}\nA:")["input_ids"]
        response_ids = _ids(tok, " " + row["a"]) + [tok.eos_token_id]
        assert ex["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids
        assert ex["input_ids"] == prompt_ids + response_ids
    assert stats["num_truncated"] == 0
    # Truncation is counted: a max_length between the two examples' lengths cuts exactly one of them.
    short = len(ds[0]["input_ids"])
    assert len(ds[1]["input_ids"]) > short
    build_dataset(cfg.model_copy(update={"max_length": short}), path, tok, stats)
    assert stats["num_truncated"] == 1


def test_all_prompt_examples_stop_the_run_unless_dropped(tmp_path, tok):
    rows = [{"q": "1 + 2?", "a": "3"}, {"q": "a much longer question " * 8, "a": "4"}]
    path = write_jsonl(tmp_path / "pr.jsonl", rows)
    cfg = DatasetConfig(path=path, prompt_field="q", response_field="a", max_length=12)
    with pytest.raises(ConfigError, match=r"example 1 of .* all prompt after truncation.*drop_all_prompt"):
        build_dataset(cfg, path, tok)
    stats: dict = {}
    ds = build_dataset(cfg.model_copy(update={"drop_all_prompt": True}), path, tok, stats)
    assert len(ds) == 1 and stats["num_no_response"] == 1 and ds[0]["labels"][-1] == tok.eos_token_id
    # Dropping cannot leave nothing to train on: every example all prompt still stops the run.
    short = cfg.model_copy(update={"drop_all_prompt": True, "max_length": 2})
    with pytest.raises(ConfigError, match="all prompt after truncation"):
        build_dataset(short, path, tok)


def _messages_error(tmp_path, tok, rows, **cfg_kwargs) -> str:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    cfg = DatasetConfig(
        path=path, **{"messages_field": "messages", "chat_template": CHAT_TEMPLATE, **cfg_kwargs}
    )
    with pytest.raises(ConfigError) as err:
        build_dataset(cfg, path, tok)
    return str(err.value)


def test_messages_validation_names_field_and_example(tmp_path, tok):
    good = {"messages": CONVERSATIONS[1]}
    user_only = {"messages": [{"role": "user", "content": "hi"}]}
    msg = _messages_error(tmp_path, tok, [good, user_only])
    assert "dataset.messages_field" in msg and "example 1" in msg and "no assistant message" in msg

    empty = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}
    msg = _messages_error(tmp_path, tok, [good, good, empty])
    assert "dataset.messages_field" in msg and "example 2" in msg and "empty" in msg

    msg = _messages_error(tmp_path, tok, [{"conversation": CONVERSATIONS[1]}])
    assert "dataset.messages_field" in msg and "example 0" in msg and "'messages'" in msg
    assert "conversation" in msg  # the fields that do exist

    fresh = AutoTokenizer.from_pretrained(tok.name_or_path)  # `tok` got CHAT_TEMPLATE set above
    assert fresh.chat_template is None  # the toy tokenizer has no template
    msg = _messages_error(tmp_path, fresh, [good], chat_template=None)
    assert "dataset.messages_field" in msg and "chat_template" in msg

    (tmp_path / "empty.jsonl").write_text("")
    cfg = DatasetConfig(
        path=str(tmp_path / "empty.jsonl"), messages_field="messages", chat_template=CHAT_TEMPLATE
    )
    with pytest.raises(ConfigError, match="dataset.path: .*has no examples"):
        build_dataset(cfg, cfg.path, tok)


def test_messages_field_rejects_an_explicit_plain_template(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATIONS[0]}])
    with pytest.raises(ConfigError, match="dataset.*messages_field"):
        parse_run_config(
            {"model": "m", "dataset": {"path": path, "messages_field": "messages", "template": "plain"}}
        )


def test_new_fields_at_their_defaults_keep_run_ids(tmp_path):
    """Adding loss_normalization / messages_field / chat_template / packing / lora / launcher / model_dtype /
    attn_implementation must not rename existing runs."""
    path = write_jsonl(tmp_path / "pr.jsonl", [{"prompt": "p", "response": "r"}])
    cfg = parse_run_config({"model": "m", "dataset": {"path": path}, "objective": {"name": "sft"}})
    # The resolved config as the first release dumped (and hashed) it, written out literally.
    old = {
        "model": "m",
        "dataset": {
            "path": path, "name": None, "split": "train", "prompt_field": "prompt", "response_field": "response",
            "template": "plain", "prompt_format": "{prompt}", "response_format": " {response}",
            "max_length": 512, "max_examples": None,
        },
        "objective": {"name": "sft"},
        "training": {},
        "seed": 0,
        "eval": {"suites": ["toy"], "backend": "hf", "limit": None, "batch_size": 32, "dtype": "float32",
                 "device": "auto"},
        "toy": None,
    }  # fmt: skip
    blob = json.dumps(old, sort_keys=True, separators=(",", ":"))
    assert cfg.config_hash() == hashlib.sha256(blob.encode()).hexdigest()[:10]
    changed = cfg.model_copy(update={"loss_normalization": "sequences"})
    assert changed.config_hash() != cfg.config_hash()
    lora = parse_run_config({**cfg.model_dump(mode="json"), "lora": {"r": 4}})
    assert lora.config_hash() != cfg.config_hash()


def test_packing_keeps_examples_apart(tmp_path, tok, tiny_toy):
    """A packed row: position ids restart per example, nothing predicts across a boundary, and the model's
    logits on each example equal its logits alone (attention does not cross examples)."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.training.data import Collator, PackingCollator

    rows = [{"q": "1 + 2?", "a": "3"}, {"q": "20 + 22?", "a": "42 and more words"}, {"q": "7?", "a": "7"}]
    path = write_jsonl(tmp_path / "pr.jsonl", rows)
    ds = build_dataset(DatasetConfig(path=path, prompt_field="q", response_field="a"), path, tok)
    examples = [ds[i] for i in range(len(ds))]
    packed = PackingCollator()(examples)
    padded = Collator(tok.pad_token_id)(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    assert packed["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]
    # The same targets in the same order as the padded batch: the last token of each example predicts nothing.
    targets = padded["shift_labels"][padded["shift_labels"] != IGNORE_INDEX]
    assert torch.equal(packed["shift_labels"][packed["shift_labels"] != IGNORE_INDEX], targets)
    ends = torch.tensor(lengths).cumsum(0) - 1
    assert (packed["shift_labels"][0, ends] == IGNORE_INDEX).all()

    model = AutoModelForCausalLM.from_pretrained(tiny_toy[1].base_model)
    with torch.no_grad():
        # use_cache=False as in training: with a KV cache transformers ignores packed boundaries.
        logits = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits[0]
        start = 0
        for e, n in zip(examples, lengths, strict=True):
            alone = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            torch.testing.assert_close(logits[start : start + n], alone, rtol=1e-4, atol=1e-5)
            start += n


@pytest.mark.parametrize("suffix", [".json", ".parquet", ".csv"])
def test_local_json_parquet_csv_give_the_same_examples_as_jsonl(tmp_path, tok, suffix):
    import pandas as pd

    rows = [{"problem": f"{a} + {a}?", "solution": f"{2 * a}"} for a in range(5)]
    ref_path = write_jsonl(tmp_path / "ref.jsonl", rows)
    path = tmp_path / f"data{suffix}"
    frame = pd.DataFrame(rows)
    {".json": lambda: frame.to_json(path, orient="records"), ".parquet": lambda: frame.to_parquet(path),
     ".csv": lambda: frame.to_csv(path, index=False)}[suffix]()  # fmt: skip
    fields = {"prompt_field": "problem", "response_field": "solution"}
    ref = build_dataset(DatasetConfig(path=ref_path, **fields), ref_path, tok)
    got = build_dataset(DatasetConfig(path=str(path), **fields), str(path), tok)
    assert got["input_ids"] == ref["input_ids"] and got["labels"] == ref["labels"]
