"""A quick greedy exact-match check, independent of lm-eval (used to measure and sanity-check worlds)."""

from __future__ import annotations

import re

import torch

from ..config.toy import PROMPT

FINAL_RE = re.compile(r"#### (\-?[0-9]+)")


@torch.no_grad()
def greedy_answers(
    model, tok, questions: list[str], max_new_tokens: int = 256, batch_size: int = 50
) -> list[str]:
    """Greedy completions of the evaluation prompt, cut at the first blank line (as lm-eval does)."""
    model.eval()
    old_side = tok.padding_side
    tok.padding_side = "left"
    outs = []
    try:
        for i in range(0, len(questions), batch_size):
            prompts = [PROMPT.format(question=q) for q in questions[i : i + batch_size]]
            enc = tok(prompts, return_tensors="pt", padding=True)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                stop_strings=["\n\n"],
                tokenizer=tok,
            )
            for row in gen[:, enc["input_ids"].shape[1] :]:
                outs.append(tok.decode(row, skip_special_tokens=True).split("\n\n")[0])
    finally:
        tok.padding_side = old_side
    return outs


def exact_match(model, tok, items: list[dict], **kw) -> tuple[float, list[str]]:
    """Fraction of items whose first ``#### N`` in the greedy completion equals ``final``."""
    outs = greedy_answers(model, tok, [it["question"] for it in items], **kw)
    hits = 0
    for out, it in zip(outs, items, strict=True):
        m = FINAL_RE.search(out)
        hits += bool(m and m.group(1) == it["final"])
    return hits / len(items), outs
