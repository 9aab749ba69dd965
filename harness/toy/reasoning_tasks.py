"""The toy "reasoning" domain: two generated task families.

- ``reasoning_mc`` (ARC / MMLU style, scored by log-likelihood over 4 choices, chance 25%): questions
  about a small fixed knowledge base (what kind of thing something is, what it can do) and comparisons
  of numbers. The choices are listed in the question, and the answer continuation is " <choice>".
  ``test_ood`` asks the same kinds of questions in phrasings never used in training.
- ``reasoning_logic`` (BBH boolean_expressions style, generative, exact match, chance 50%): evaluate
  an expression over True/False with and/or/not and parentheses. The reference answer reduces one
  operator per line and ends in ``#### True`` / ``#### False``. ``test_ood`` has one more operator.

The knowledge itself (``KB``, ``PROPERTIES``) is taught only through the pre-training corpus
(``fact`` documents). Every item is a pure function of ``(seed, split)``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from .config import PROMPT
from .sampling import distinct, endless

KB = {
    "bird": ["robin", "sparrow", "eagle", "owl", "crow", "parrot", "swan", "duck"],
    "fish": ["salmon", "trout", "shark", "tuna", "carp", "cod", "eel", "pike"],
    "tree": ["oak", "pine", "maple", "birch", "elm", "willow", "cedar", "palm"],
    "metal": ["iron", "copper", "silver", "gold", "tin", "zinc", "lead", "nickel"],
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear"],
    "tool": ["hammer", "saw", "drill", "wrench", "chisel", "shovel", "rake", "axe"],
    "vehicle": ["car", "bus", "truck", "train", "bike", "boat", "plane", "van"],
    "instrument": ["piano", "violin", "drum", "flute", "guitar", "harp", "trumpet", "cello"],
}
PROPERTIES = {
    "bird": "fly",
    "fish": "swim",
    "tree": "grow leaves",
    "metal": "conduct electricity",
    "fruit": "be eaten",
    "tool": "fix things",
    "vehicle": "carry people",
    "instrument": "make music",
}
CATEGORY_OF = {m: c for c, ms in KB.items() for m in ms}


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


# question templates per kind: (in-distribution phrasings, held-out phrasings for test_ood)
MC_TEMPLATES = {
    "member": (["Which of these is {a_cat}?", "Which one is {a_cat}?"], ["Pick the {cat} from the list."]),
    "kind": (["What kind of thing is {a_m}?", "{A_m} is a what?"], ["Name the group that {a_m} belongs to."]),
    "can": (
        ["Which of these can {prop}?", "Which one can {prop}?"],
        ["Find the thing that is able to {prop}."],
    ),
    "largest": (
        ["Which number is the largest?", "Which number is the biggest?"],
        ["Find the greatest number."],
    ),
}
MC_SPLITS = ("train", "val", "test_id", "test_ood", "pretrain")
LOGIC_OPS = {"train": (2, 3), "val": (2, 3), "test_id": (2, 3), "test_ood": (4, 4), "pretrain": (1, 3)}


# ---------------------------------------------------------------------------------- multiple choice
def sample_mc(rng: random.Random, split: str) -> dict:
    kind = rng.choice(list(MC_TEMPLATES))
    seen_t, ood_t = MC_TEMPLATES[kind]
    template = rng.choice(ood_t if split == "test_ood" else seen_t)
    cats = rng.sample(list(KB), 4)  # the answer's category first, distractors from 3 others
    if kind == "member" or kind == "can":
        choices = [rng.choice(KB[c]) for c in cats]
        question = template.format(cat=cats[0], a_cat=_a(cats[0]), prop=PROPERTIES[cats[0]])
    elif kind == "kind":
        choices = list(cats)
        m = _a(rng.choice(KB[cats[0]]))
        question = template.format(a_m=m, A_m=m[0].upper() + m[1:])
    else:
        choices = [str(v) for v in rng.sample(range(1, 100), 4)]
        choices.sort(key=int, reverse=True)  # the largest first (it is the answer), then shuffled
    answer = choices[0]
    rng.shuffle(choices)
    if kind == "largest":
        question = template
    question = f"{question} Choices: {', '.join(choices)}."
    return {
        "question": question,
        "choices": choices,
        "label": choices.index(answer),
        "answer": answer,
        "kind": kind,
    }


def fact_document(rng: random.Random) -> str:
    """Plain statements of the knowledge base (the only place the facts are taught)."""
    lines = []
    for _ in range(rng.randint(3, 6)):
        cat = rng.choice(list(KB))
        m = rng.choice(KB[cat])
        style = rng.randrange(4)
        if style == 0:
            lines.append(f"{_a(m).capitalize()} is {_a(cat)}.")
        elif style == 1:
            lines.append(f"{_a(m).capitalize()} is {_a(cat)}, and every {cat} can {PROPERTIES[cat]}.")
        elif style == 2:
            lines.append(f"{_a(m).capitalize()} can {PROPERTIES[cat]}.")
        else:
            others = rng.sample([x for x in KB[cat] if x != m], 2)
            lines.append(f"The {m}, the {others[0]} and the {others[1]} are all {cat}s.")
    return " ".join(lines)


# ------------------------------------------------------------------------------------- boolean logic
def _expr(rng: random.Random, n_ops: int) -> tuple[str, bool, list[str]]:
    """A random expression with exactly ``n_ops`` operators: (text, value, reduction lines)."""
    if n_ops == 0:
        v = rng.random() < 0.5
        return str(v), v, []
    if rng.random() < 0.3:
        text, v, steps = _expr(rng, n_ops - 1)
        inner = f"( {text} )" if " and " in text or " or " in text else text
        return f"not {inner}", not v, steps + [f"not {v} = {not v}"]
    left_ops = rng.randint(0, n_ops - 1)
    lt, lv, ls = _expr(rng, left_ops)
    rt, rv, rs = _expr(rng, n_ops - 1 - left_ops)
    op = rng.choice(["and", "or"])
    val = (lv and rv) if op == "and" else (lv or rv)
    wrap = lambda t: f"( {t} )" if " and " in t or " or " in t else t  # noqa: E731
    return f"{wrap(lt)} {op} {wrap(rt)}", val, ls + rs + [f"{lv} {op} {rv} = {val}"]


def sample_logic(rng: random.Random, split: str) -> dict:
    lo, hi = LOGIC_OPS[split]
    text, val, steps = _expr(rng, rng.randint(lo, hi))
    return {
        "question": f"What is the value of: {text}?",
        "answer": "\n".join(steps + [f"#### {val}"]),
        "final": str(val),
        "expression": text,
    }


# ------------------------------------------------------------------------------------ shared API
SAMPLERS = {"reasoning_mc": sample_mc, "reasoning_logic": sample_logic}


def generate(
    dataset: str, split: str, n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()
) -> list[dict]:
    """``n`` distinct items of ``dataset``/``split`` (no question repeated, none in ``exclude``)."""
    if split not in LOGIC_OPS:
        raise ValueError(f"unknown {dataset} split {split!r}; valid: {sorted(LOGIC_OPS)}")
    rng = random.Random(f"toy-{dataset}/{seed}/{split}")
    return distinct(lambda: SAMPLERS[dataset](rng, split), n, exclude, f"{dataset}/{split}")


def iter_pretrain(dataset: str, seed: int, exclude: set[str]) -> Iterator[dict]:
    rng = random.Random(f"toy-{dataset}/{seed}/pretrain")
    return endless(lambda: SAMPLERS[dataset](rng, "pretrain"), exclude)


def document(dataset: str, item: dict, rng: random.Random) -> str:
    """A pre-training document: the evaluation format (prompt + " " + answer)."""
    return PROMPT.format(question=item["question"]) + " " + item["answer"]
