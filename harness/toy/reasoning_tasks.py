"""The toy "reasoning" domain: two generated task families.

- ``reasoning_mc`` (ARC / MMLU style, scored by log-likelihood over 4 choices, chance 25%): which of
  four one-digit numbers is the largest / smallest (``Which number is the biggest? Choices: 5, 1, 3,
  2.``). The choices are listed in the question, and the answer continuation is " <choice>".
  ``test_ood`` asks the same questions in phrasings never used in training.
- ``reasoning_logic`` (BBH navigate style, generative, exact match, chance 50%): after a few steps
  forward and backward, are you back at the starting point? The reference answer tracks the position
  one move per line and ends in ``#### Yes`` / ``#### No`` (half the items each). ``test_ood`` has one
  more move than any training walk.

Every answer is computed from the question itself, not recalled. Measured on full builds: questions
about a small knowledge base (6-8 kinds of things, taught by 3-4% of the corpus; toy-v4, toy-v5) stayed
at chance (25-29%), as did "which word comes next in a repeating list" (a toy-v6 draft: 23-28%, with the
list either before or after the choices); comparing one-digit numbers reached 72-100% (in domain, in
each of four toy-v6 builds). Every item is a pure function of ``(seed, split)``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from ..config.toy import PROMPT
from .sampling import distinct, endless

SPLITS = ("train", "val", "test_id", "test_ood", "pretrain")
# moves per walk. (toy-v5 first tried BBH web_of_lies, 2-4 people: every base stayed at chance, 47-50%;
# copying "Ann lies" from a question that names everyone twice is too ambiguous for this model.)
LOGIC_STEPS = {"train": (2, 4), "val": (2, 4), "test_id": (2, 4), "test_ood": (5, 5), "pretrain": (2, 4)}
MAX_POS = 19  # positions before the last move stay in 1..MAX_POS


# ---------------------------------------------------------------------------------- multiple choice
# question templates per kind: (in-distribution phrasings, held-out phrasings for test_ood). The held-out
# phrasings reuse words the corpus has (a toy-v6 draft with "greatest" / "least", words the model never
# saw, scored below chance: a shift no model could handle).
MC_TEMPLATES = {
    "largest": (
        ["Which number is the largest?", "Which number is the biggest?"],
        ["Which of the numbers is the largest?"],
    ),
    "smallest": (
        ["Which number is the smallest?", "Which number is the lowest?"],
        ["Which of the numbers is the smallest?"],
    ),
}


def sample_mc(rng: random.Random, split: str) -> dict:
    kind = rng.choice(list(MC_TEMPLATES))
    seen_t, ood_t = MC_TEMPLATES[kind]
    template = rng.choice(ood_t if split == "test_ood" else seen_t)
    # one-digit numbers: one token each, so a choice is decided at its digit (toy-v5's numbers 1-99 were
    # at chance on "largest": comparing two-token numbers was beyond the base)
    choices = [str(v) for v in rng.sample(range(1, 10), 4)]
    answer = (max if kind == "largest" else min)(choices, key=int)
    return {
        "question": f"{template} Choices: {', '.join(choices)}.",
        "choices": choices,
        "label": choices.index(answer),
        "answer": answer,
        "kind": kind,
    }


# ------------------------------------------------------------------------------------- navigate
def _steps(k: int) -> str:
    return f"{k} step" if k == 1 else f"{k} steps"


def sample_logic(rng: random.Random, split: str, back_to_start: bool | None = None) -> dict:
    """A walk on a line from 0 with moves of 1-9 steps (but the last): every position before the last move stays in
    1..MAX_POS (never below the start); the last move returns to the start if ``back_to_start`` (None:
    with probability 1/2)."""
    lo, hi = LOGIC_STEPS[split]
    moves: list[int] = []
    pos = 0
    for _ in range(rng.randint(lo, hi) - 1):
        if pos == 0 or (pos < MAX_POS and rng.random() < 0.5):
            moves.append(rng.randint(1, min(9, MAX_POS - pos)))
        else:
            moves.append(-rng.randint(1, pos - 1) if pos > 1 else 1)
        pos += moves[-1]
    if back_to_start is None:
        back_to_start = rng.random() < 0.5
    if back_to_start:
        moves.append(-pos)  # back to the start (the one move that may exceed 9 steps)
    else:  # anywhere else: forward, or part of the way back
        fwd = pos == 1 or rng.random() < 0.5
        moves.append(rng.randint(1, 9) if fwd else -rng.randint(1, min(9, pos - 1)))
    sentences, steps, pos = [], ["Start at 0."], 0
    for k in moves:
        sentences.append(f"Take {_steps(abs(k))} {'forward' if k > 0 else 'backward'}.")
        word, sign = ("Forward", "+") if k > 0 else ("Back", "-")
        steps.append(f"{word} {abs(k)}: {pos} {sign} {abs(k)} = {pos + k}.")
        pos += k
    final = "Yes" if pos == 0 else "No"
    steps.append(f"End at {pos}, {'the start' if pos == 0 else 'not the start'}.")
    return {
        # fixed words before the first and after the last move: a shorter walk's question is then never
        # a substring of a longer one's (the corpus filter and the contamination test match substrings)
        "question": "Follow these instructions: "
        + " ".join(sentences)
        + " Do you return to the starting point?",
        "answer": "\n".join(steps + [f"#### {final}"]),
        "final": final,
        "moves": len(moves),
    }


# ------------------------------------------------------------------------------------ shared API
SAMPLERS = {"reasoning_mc": sample_mc, "reasoning_logic": sample_logic}


def generate(
    dataset: str, split: str, n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()
) -> list[dict]:
    """``n`` distinct items of ``dataset``/``split`` (no question repeated, none in ``exclude``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown {dataset} split {split!r}; valid: {sorted(SPLITS)}")
    rng = random.Random(f"toy-{dataset}/{seed}/{split}")
    if dataset == "reasoning_logic":  # exactly half "Yes" (fewer distinct walks return to the start)
        yes = distinct(lambda: sample_logic(rng, split, True), n // 2, exclude, f"{dataset}/{split}")
        no = distinct(lambda: sample_logic(rng, split, False), n - n // 2, exclude, f"{dataset}/{split}")
        return [it for pair in zip(no, yes, strict=False) for it in pair] + no[len(yes) :]
    return distinct(lambda: SAMPLERS[dataset](rng, split), n, exclude, f"{dataset}/{split}")


def iter_pretrain(dataset: str, seed: int, exclude: set[str]) -> Iterator[dict]:
    rng = random.Random(f"toy-{dataset}/{seed}/pretrain")
    return endless(lambda: SAMPLERS[dataset](rng, "pretrain"), exclude)


def document(dataset: str, item: dict, rng: random.Random) -> str:
    """A pre-training document: the evaluation format (prompt + " " + answer)."""
    return PROMPT.format(question=item["question"]) + " " + item["answer"]
