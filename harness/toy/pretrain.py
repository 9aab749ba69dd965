"""Pre-training corpus and a plain, reproducible torch loop for the toy base model.

This is data generation (making a base model to fine-tune), not the fine-tuning recipe: a short
step-based loop, seeded, on packed rows of whole documents.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..config.toy import DOC_KINDS, PROMPT, ToyConfig
from . import code_tasks, math_tasks, reasoning_tasks
from .tokenizer import train_tokenizer


def math_document(kind: str, rng: random.Random, problems) -> str:
    """One math pre-training document of ``kind`` (``qa``, ``solution`` or ``drill``)."""
    if kind == "drill":
        return math_tasks.arithmetic_drill(rng, rng.randint(6, 14))
    p = next(problems)
    if kind == "qa":  # the evaluation format, exactly: prompt + " " + answer
        return PROMPT.format(question=p["question"]) + " " + p["answer"]
    if kind == "solution":  # the same skill in other surface formats
        style = rng.randrange(3)
        if style == 0:
            return f"Problem: {p['question']}\nSolution:\n{p['answer']}"
        if style == 1:
            return f"{p['question']}\n{p['answer'].replace('#### ', 'The answer is ')}."
        return f"Q: {p['question']}\nA: {p['answer']}"
    raise ValueError(f"unknown document kind {kind!r}")


def corpus(cfg: ToyConfig, exclude: set[str]) -> Iterator[str]:
    """Endless deterministic stream of pre-training documents of every domain of the world, drawn with
    the ``pretrain.mix`` weights. No held-out (val / test) question ever appears."""
    rng = random.Random(f"toy-corpus/{cfg.seed}")
    math_problems = math_tasks.iter_pretrain_problems(cfg.seed, exclude)
    streams = {
        ds: mod.iter_pretrain(ds, cfg.seed, exclude)
        for ds, mod in (
            ("code_output", code_tasks),
            ("code_function", code_tasks),
            ("reasoning_mc", reasoning_tasks),
            ("reasoning_logic", reasoning_tasks),
        )
    }
    mix = {k: w for k, w in sorted(cfg.pretrain.mix.items()) if DOC_KINDS[k] in cfg.domains and w > 0}
    kinds, weights = zip(*mix.items(), strict=True)
    while True:
        kind = rng.choices(kinds, weights)[0]
        if kind.startswith("math_"):
            yield math_document(kind[len("math_") :], rng, math_problems)
        else:
            mod = code_tasks if kind.startswith("code_") else reasoning_tasks
            yield mod.document(kind, next(streams[kind]), rng)


def corpus_tokenizer(cfg: ToyConfig, exclude: set[str]) -> PreTrainedTokenizerFast:
    """The world's tokenizer: byte-level BPE trained on the corpus's first 3000 documents."""
    docs = corpus(cfg, exclude)
    tok = train_tokenizer([next(docs) for _ in range(3000)], cfg.vocab_size)
    tok.model_max_length = cfg.model.max_position_embeddings
    return tok


def pack_rows(docs, tok: PreTrainedTokenizerFast, n_rows: int, seq_len: int) -> torch.Tensor:
    """Greedily pack whole documents (each followed by EOS) into ``n_rows`` rows of ``seq_len`` ids,
    right-padded with PAD. Every row starts at a document start, like a prompt at evaluation."""
    rows: list[list[int]] = []
    cur: list[int] = []
    pending = None
    while len(rows) < n_rows:
        ids = (
            pending
            if pending is not None
            else tok(next(docs))["input_ids"][: seq_len - 1] + [tok.eos_token_id]
        )
        pending = None
        if len(cur) + len(ids) <= seq_len:
            cur += ids
        else:
            rows.append(cur + [tok.pad_token_id] * (seq_len - len(cur)))
            cur, pending = [], ids
    return torch.tensor(rows, dtype=torch.long)


def make_model(cfg: ToyConfig, tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    m = cfg.model
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_heads,
        intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config)


def lr_at(step: int, cfg: ToyConfig) -> float:
    p = cfg.pretrain
    if step < p.warmup:
        return p.lr * (step + 1) / p.warmup
    frac = (step - p.warmup) / max(1, p.steps - p.warmup)
    return p.lr * (p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def pretrain(cfg: ToyConfig, tok: PreTrainedTokenizerFast, exclude: set[str], progress: bool = True):
    """Build and pre-train the base model. Returns (model, final loss = mean of the last 20 steps)."""
    p = cfg.pretrain
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, tok)
    data = pack_rows(corpus(cfg, exclude), tok, p.steps * p.batch_size, p.seq_len)
    labels = data.masked_fill(data == tok.pad_token_id, -100)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay, betas=(0.9, 0.95))
    model.train()
    losses: list[float] = []
    t0 = time.time()
    bar = tqdm(range(p.steps), desc="toy pretrain", disable=not progress, mininterval=1.0)
    for step in bar:
        idx = order[step * p.batch_size : (step + 1) * p.batch_size]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = model(input_ids=data[idx], labels=labels[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.eval()
    tail = losses[-20:]
    return model, sum(tail) / len(tail), time.time() - t0
