"""The toy world: deterministic disjoint data with checkable answers, tokenizer round-trip, cached build."""

from __future__ import annotations

import json
import re
import time

import pytest

from harness import toy
from harness.toy import math_tasks
from harness.toy.world import PLACEHOLDER, generate_data

SMALL = toy.ToyConfig(n_train=1500, n_test=100)


def read_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jsonl"))}


def test_data_is_byte_identical_for_same_seed(tmp_path):
    generate_data(SMALL, tmp_path / "a")
    generate_data(SMALL, tmp_path / "b")
    a, b = read_bytes(tmp_path / "a"), read_bytes(tmp_path / "b")
    assert sorted(a) == ["math/test_id.jsonl", "math/test_ood.jsonl", "math/train.jsonl"]
    assert a == b
    generate_data(SMALL.model_copy(update={"seed": 1}), tmp_path / "c")
    assert read_bytes(tmp_path / "c") != a


def test_splits_disjoint_and_sized(tmp_path):
    generate_data(SMALL, tmp_path)
    qs = {}
    for split in toy.SPLITS:
        items = [json.loads(line) for line in (tmp_path / "math" / f"{split}.jsonl").read_text().splitlines()]
        assert all(set(it) == {"question", "answer", "final"} for it in items)
        qs[split] = [it["question"] for it in items]
        assert len(set(qs[split])) == len(qs[split]), f"duplicate questions in {split}"
    assert len(qs["train"]) == 1500 and len(qs["test_id"]) == len(qs["test_ood"]) == 100
    assert not set(qs["train"]) & set(qs["test_id"])
    assert not set(qs["train"]) & set(qs["test_ood"])
    assert not set(qs["test_id"]) & set(qs["test_ood"])


def _independent_check(answer: str, final: str) -> None:
    """Re-derive the result from the CoT lines with Python arithmetic (not the generator's checker)."""
    *body, last = answer.split("\n")
    assert last == f"#### {final}"
    results = []
    for line in body:
        for expr, res in re.findall(r"(\d+ [-+*/] \d+) = (\d+)", line):
            assert eval(expr) == int(res), line  # noqa: S307 (digits and one operator only)
            assert 0 <= int(res) <= 99
            results.append(int(res))
    assert results and results[-1] == int(final)


def test_every_answer_is_correct_and_well_formed():
    steps = {}
    for split, n in (("train", 3000), ("test_id", 300), ("test_ood", 300)):
        for it in math_tasks.generate(split, n, seed=0):
            _independent_check(it["answer"], it["final"])
            assert "\n\n" not in it["answer"] and "\n\n" not in it["question"]
            steps.setdefault(split, []).append(it["question"].count(".") - 1)
    # OOD stories are longer (one more step) than in-domain ones on average
    mean = {s: sum(v) / len(v) for s, v in steps.items()}
    assert mean["test_ood"] > mean["test_id"] + 0.5


def test_checker_catches_wrong_arithmetic():
    assert math_tasks.check_solution("A has 3 + 4 = 7.\n#### 7", "7") == []
    assert math_tasks.check_solution("A has 3 + 4 = 8.\n#### 8", "8")
    assert math_tasks.check_solution("A has 3 + 4 = 7.\n#### 8", "8")


def test_ood_uses_held_out_names_and_more_steps():
    train = math_tasks.generate("train", 2000, seed=0)
    ood = math_tasks.generate("test_ood", 100, seed=0)
    train_text = " ".join(it["question"] + it["answer"] for it in train)
    for name in math_tasks.OOD_NAMES:
        assert f"{name} " not in train_text
    assert all(any(f"{name} " in it["question"] for name in math_tasks.OOD_NAMES) for it in ood)
    # one more step = one more sentence in the story, on average
    mean_sentences = lambda items: sum(it["question"].count(". ") for it in items) / len(items)  # noqa: E731
    assert mean_sentences(ood) > mean_sentences(train) + 0.7


def test_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from harness.toy.tokenizer import train_tokenizer

    items = math_tasks.generate("train", 500, seed=0)
    texts = [toy.PROMPT.format(question=it["question"]) + " " + it["answer"] for it in items]
    tok = train_tokenizer(texts, 512)
    assert len(tok) == 512
    ids = tok("Ann has 37 apples")["input_ids"]
    assert [tok.decode([i]) for i in ids if tok.decode([i]).strip().isdigit()] == ["3", "7"]
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=512, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    re_tok = AutoTokenizer.from_pretrained(tmp_path)
    for text in texts[:100] + ["Question: 12 + 7 =\nAnswer: 19<|eos|>"]:
        assert re_tok(text)["input_ids"] == tok(text)["input_ids"]
        assert re_tok.decode(re_tok(text)["input_ids"]) == text
    assert (re_tok.bos_token, re_tok.eos_token, re_tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert re_tok("7")["input_ids"] == re_tok("7", add_special_tokens=False)["input_ids"]  # no auto BOS


def test_hash_and_refs():
    tiny = toy.ToyConfig.preset("tiny")
    assert toy.world_hash(tiny) == toy.world_hash(toy.ToyConfig.preset("tiny"))
    assert toy.world_hash(tiny) != toy.world_hash(tiny.model_copy(update={"seed": 1}))
    assert toy.world_hash(toy.ToyConfig()) == toy.world_hash(toy.ToyConfig.preset("demo"))
    with pytest.raises(ValueError, match="n_trian"):
        toy.ToyConfig(n_trian=3)
    assert toy.is_toy_ref("toy:base") and not toy.is_toy_ref("openai/gsm8k")
    assert toy.resolve("openai/gsm8k", tiny) == "openai/gsm8k"
    with pytest.raises(ValueError, match="toy:math/train"):
        toy.resolve("toy:math/validation", tiny)


@pytest.mark.slow
def test_build_tiny_world_cached(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("OTR_HARNESS_CACHE", str(tmp_path))
    cfg = toy.ToyConfig.preset("tiny")
    world = toy.build(cfg, progress=False)
    assert world.root == tmp_path / "toy" / toy.world_hash(cfg)
    assert world.info["pretrain_final_loss"] > 0
    assert [p.name for p in (tmp_path / "toy").iterdir() if ".tmp-" in p.name] == []

    t0 = time.time()
    again = toy.build(cfg, progress=False)
    assert again.root == world.root and time.time() - t0 < 2.0
    assert toy.resolve("toy:base", cfg) == str(world.base_model)
    assert toy.resolve("toy:math/test_ood", cfg) == str(world.data_file("math", "test_ood"))

    model = AutoModelForCausalLM.from_pretrained(world.base_model)
    tok = AutoTokenizer.from_pretrained(world.base_model)
    assert model.config.model_type == "llama" and model.config.eos_token_id == tok.eos_token_id
    assert world.data_file("math", "train").read_text().count("\n") == cfg.n_train

    rendered = sorted(p.name for p in world.tasks_dir.iterdir())
    assert {"toy_math.yaml", "toy_math_id.yaml", "toy_math_ood.yaml"} <= set(rendered)
    for p in world.tasks_dir.iterdir():
        text = p.read_text()
        assert PLACEHOLDER not in text
        for path in re.findall(r"test: (\S+)", text):
            assert path.startswith("/") and (world.root / "math").exists()
            assert __import__("pathlib").Path(path).is_file(), path
