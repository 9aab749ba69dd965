"""The toy "reasoning" domain: two generated task families.

- ``reasoning_mc`` (ARC / MMLU style, scored by log-likelihood over 4 choices, chance 25%): questions
  about a small fixed knowledge base (what kind of thing something is, which listed thing belongs to a
  kind) and comparisons of numbers (largest, smallest). The choices are listed in the question, and the
  answer continuation is " <choice>". ``test_ood`` asks the same kinds of questions in phrasings never
  used in training.
- ``reasoning_logic`` (BBH navigate style, generative, exact match, chance 50%): after a few steps
  forward and backward, are you back at the starting point? The reference answer tracks the position
  one move per line and ends in ``#### Yes`` / ``#### No`` (half the items each). ``test_ood`` has one
  more move than any training walk.

The knowledge itself (``KB``) is taught only through the pre-training corpus (``fact`` documents and
multiple-choice documents of the training phrasings). Every item is a pure function of ``(seed, split)``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from .config import PROMPT
from .sampling import distinct, endless

# 6 kinds x 4 members. Measured: the demo base does not learn them (knowledge questions at chance, 25-29%),
# nor did it learn toy-v4's 8 x 8 from 3% of its corpus: too few exposures for 0.86M parameters.
KB = {
    "bird": ["robin", "eagle", "owl", "duck"],
    "fish": ["salmon", "shark", "cod", "eel"],
    "tree": ["oak", "pine", "maple", "palm"],
    "metal": ["iron", "copper", "gold", "tin"],
    "fruit": ["apple", "banana", "grape", "lemon"],
    "tool": ["hammer", "saw", "drill", "axe"],
}
PLURAL = {
    "bird": "birds",
    "fish": "fish",
    "tree": "trees",
    "metal": "metals",
    "fruit": "fruits",
    "tool": "tools",
}
CATEGORY_OF = {m: c for c, ms in KB.items() for m in ms}


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


# question templates per kind: (in-distribution phrasings, held-out phrasings for test_ood)
MC_TEMPLATES = {
    "member": (["Which of these is {a_cat}?", "Which one is {a_cat}?"], ["Pick the {cat} from the list."]),
    "kind": (["What kind of thing is {a_m}?", "{A_m} is a what?"], ["Name the group that {a_m} belongs to."]),
    "largest": (
        ["Which number is the largest?", "Which number is the biggest?"],
        ["Find the greatest number."],
    ),
    "smallest": (
        ["Which number is the smallest?", "Which number is the lowest?"],
        ["Find the least number."],
    ),
}
SPLITS = ("train", "val", "test_id", "test_ood", "pretrain")
# moves per walk. (toy-v5 first tried BBH web_of_lies, 2-4 people: every base stayed at chance, 47-50%;
# copying "Ann lies" from a question that names everyone twice is too ambiguous for this model.)
LOGIC_STEPS = {"train": (2, 4), "val": (2, 4), "test_id": (2, 4), "test_ood": (5, 5), "pretrain": (2, 4)}
MAX_POS = 19  # positions before the last move stay in 1..MAX_POS


# ---------------------------------------------------------------------------------- multiple choice
def sample_mc(rng: random.Random, split: str) -> dict:
    kind = rng.choice(list(MC_TEMPLATES))
    seen_t, ood_t = MC_TEMPLATES[kind]
    template = rng.choice(ood_t if split == "test_ood" else seen_t)
    cats = rng.sample(list(KB), 4)  # the answer's category first, distractors from 3 others
    if kind == "member":
        choices = [rng.choice(KB[c]) for c in cats]
        question = template.format(cat=cats[0], a_cat=_a(cats[0]))
    elif kind == "kind":
        choices = list(cats)
        m = _a(rng.choice(KB[cats[0]]))
        question = template.format(a_m=m, A_m=m[0].upper() + m[1:])
    else:
        choices = [str(v) for v in rng.sample(range(1, 100), 4)]
        # the answer first, then shuffled
        choices.sort(key=int, reverse=kind == "largest")
        question = template
    answer = choices[0]
    rng.shuffle(choices)
    question = f"{question} Choices: {', '.join(choices)}."
    return {
        "question": question,
        "choices": choices,
        "label": choices.index(answer),
        "answer": answer,
        "kind": kind,
    }


def fact_document(rng: random.Random) -> str:
    """Plain statements of the knowledge base, in both directions (the only place outside the
    multiple-choice documents where the facts are taught)."""
    lines = []
    for _ in range(rng.randint(3, 6)):
        cat = rng.choice(list(KB))
        m = rng.choice(KB[cat])
        style = rng.randrange(3)
        if style == 0:
            lines.append(f"{_a(m).capitalize()} is {_a(cat)}.")
        elif style == 1:
            others = rng.sample([x for x in KB[cat] if x != m], 2)
            lines.append(f"The {m}, the {others[0]} and the {others[1]} are all {PLURAL[cat]}.")
        else:
            lines.append(f"The {PLURAL[cat]} are the {', the '.join(KB[cat][:-1])} and the {KB[cat][-1]}.")
    return " ".join(lines)


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
