"""GSM8K-style multi-step arithmetic word problems with small numbers (the toy "math" domain).

Every problem is a short story about one or more people and a kind of object. The solution is a
chain of thought whose computing lines contain ``a op b = c`` (``op`` in ``+ - * /``, all values
integers in 0..99) and whose last line is ``#### <answer>``. Everything is a pure function of
``(seed, split)``: the same inputs give the same items, in the same order.

Splits
------
- ``train`` / ``val`` / ``test_id``: 2-3 reasoning steps, names from the training pool, all phrasings.
- ``test_ood``: one more step (4) and names never seen in train (``OOD_SHIFTS``; held-out question
  phrasings exist too but are off by default: the tiny base then scores ~0). Each individual step
  is still a kind seen in training, so a model can in principle solve it.
- ``pretrain``: the same generator with 1-3 steps, used only to build the pre-training corpus
  (its texts are filtered against the test splits by the caller).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from .sampling import distinct, endless

MAX_VALUE = 99  # every operand, intermediate and final result lies in 0..MAX_VALUE

NAMES = [
    "Mia", "Tom", "Anna", "Ben", "Lily", "Sam", "Emma", "Jack", "Lucy", "Noah", "Ella", "Leo",
    "Zoe", "Max", "Ava", "Finn", "Ruby", "Owen", "Nora", "Eli", "Ivy", "Dan", "Rosa", "Liam",
]  # fmt: skip
OOD_NAMES = ["Kai", "Maya", "Omar", "Tess", "Hugo", "Iris", "Jude", "Vera"]
# (singular, plural); plural is what the story counts
OBJECTS = [
    "apples", "marbles", "stickers", "pencils", "cookies", "books", "coins", "shells", "cards",
    "balloons", "stamps", "candies", "rocks", "flowers", "toys", "beads",
]  # fmt: skip
CONTAINERS = ["bags", "boxes", "packs", "jars", "baskets"]
# 'he'/'she' chosen by name parity-free lookup so a name always gets the same pronoun
SHE = {"Mia", "Anna", "Lily", "Emma", "Lucy", "Ella", "Zoe", "Ava", "Ruby", "Nora", "Ivy", "Rosa"}
SHE |= {"Maya", "Tess", "Iris", "Vera"}

STEPS = {"train": (2, 3), "val": (2, 3), "test_id": (2, 3), "test_ood": (4, 4), "pretrain": (1, 3)}
# What makes test_ood out of distribution: "steps" (one more step), "names" (held-out names),
# "phrasing" (held-out final-question sentences). Measured on the demo base (28.5% on test_id):
# steps 6%, names+phrasing 4%, steps+names 4.5%, all three 0.5%; the default keeps OOD above chance.
OOD_SHIFTS = ("steps", "names")


@dataclass
class Problem:
    question: str
    answer: str  # chain of thought, ending in "#### N"
    final: int

    def to_json(self) -> dict:
        return {"question": self.question, "answer": self.answer, "final": str(self.final)}


def _pron(name: str) -> tuple[str, str]:
    return ("she", "her") if name in SHE else ("he", "his")


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


# ---------------------------------------------------------------- story family 1: a running total
# Each step kind: (question sentence variants, solution line); {x} current value, {n}/{a}/{b} operands.
GAIN_Q = [
    "{P} buys {n} more {obj}.",
    "{P} finds {n} more {obj}.",
    "Then {p} gets {n} {obj} from {o}.",
    "{o} gives {N} {n} {obj}.",
]
LOSE_Q = [
    "{P} gives {n} {obj} to {o}.",
    "{P} loses {n} {obj}.",
    "Then {p} sells {n} {obj}.",
    "{P} uses {n} of the {obj}.",
]
GROUPS_Q = [
    "{P} buys {a} {c} with {b} {obj} in each.",
    "Then {p} gets {a} {c} of {obj}, and each holds {b}.",
]
DOUBLE_Q = ["{P} doubles the number of {obj} {p} has.", "Then the number of {obj} {N} has doubles."]
SPLIT_Q = [
    "{P} splits the {obj} into {k} equal groups and keeps one group.",
    "{P} shares the {obj} equally among {k} friends, keeping one share.",
]
FINAL_Q = ["How many {obj} does {N} have now?", "How many {obj} does {N} have at the end?"]
FINAL_Q_OOD = ["At the end, what is the number of {obj} that {N} owns?"]


def _running(rng: random.Random, n_steps: int, names: list[str], final_qs: list[str]) -> Problem:
    name, other = rng.sample(names, 2)
    p, _ = _pron(name)
    obj = rng.choice(OBJECTS)
    x = rng.randint(2, 25)
    fmt = {"N": name, "P": name, "p": p, "o": other, "obj": obj}
    q = [f"{name} has {x} {obj}."]
    a = [f"{name} starts with {x} {obj}."]
    for i in range(n_steps):
        fmt["P"] = _cap(p) if i % 2 == 0 else name  # alternate name / pronoun to keep it readable
        kinds = ["gain", "lose"]
        if x >= 2:
            kinds += ["split"]
        if x <= MAX_VALUE // 2:
            kinds += ["double"]
        if x <= MAX_VALUE - 4:
            kinds += ["groups"]
        kind = rng.choice(kinds)
        if kind == "gain" and x < MAX_VALUE:
            n = rng.randint(1, min(15, MAX_VALUE - x))
            q.append(rng.choice(GAIN_Q).format(n=n, **fmt))
            a.append(f"After getting {n} more, {p} has {x} + {n} = {x + n}.")
            x += n
        elif kind in ("gain", "lose") and x >= 1:
            n = rng.randint(1, min(15, x))
            q.append(rng.choice(LOSE_Q).format(n=n, **fmt))
            a.append(f"After losing {n}, {p} has {x} - {n} = {x - n}.")
            x -= n
        elif kind == "double":
            q.append(rng.choice(DOUBLE_Q).format(**fmt))
            a.append(f"After doubling, {p} has {x} * 2 = {2 * x}.")
            x *= 2
        elif kind == "split":
            ks = [k for k in range(2, 6) if x % k == 0]
            if not ks:  # e.g. a prime: fall back to losing
                n = rng.randint(1, min(15, x))
                q.append(rng.choice(LOSE_Q).format(n=n, **fmt))
                a.append(f"After losing {n}, {p} has {x} - {n} = {x - n}.")
                x -= n
                continue
            k = rng.choice(ks)
            q.append(rng.choice(SPLIT_Q).format(k=k, **fmt))
            a.append(f"One of {k} equal groups is {x} / {k} = {x // k}.")
            x //= k
        else:  # groups: two computing lines for one step
            room = MAX_VALUE - x
            pairs = [(i, j) for i in range(2, 6) for j in range(2, 10) if i * j <= room]
            ga, gb = rng.choice(pairs)
            c = rng.choice(CONTAINERS)
            q.append(rng.choice(GROUPS_Q).format(a=ga, b=gb, c=c, **fmt))
            a.append(f"The {c} hold {ga} * {gb} = {ga * gb} {obj}.")
            a.append(f"Now {p} has {x} + {ga * gb} = {x + ga * gb}.")
            x += ga * gb
    q.append(rng.choice(final_qs).format(**fmt))
    a.append(f"#### {x}")
    return Problem(" ".join(q), "\n".join(a), x)


# ------------------------------------------------------------ story family 2: comparisons in a chain
MORE_Q = ["{B} has {n} more {obj} than {A}.", "{B} has {n} {obj} more than {A} does."]
FEWER_Q = ["{B} has {n} fewer {obj} than {A}.", "{B} has {n} {obj} less than {A} does."]
TWICE_Q = ["{B} has twice as many {obj} as {A}.", "{B} has two times the {obj} of {A}."]
HALF_Q = ["{B} has half as many {obj} as {A}."]
TOTAL_Q = ["How many {obj} do {A} and {B} have together?", "How many {obj} do {A} and {B} have in total?"]
TOTAL_Q_OOD = ["Together, what is the number of {obj} that {A} and {B} own?"]
LAST_Q = ["How many {obj} does {B} have?"]
LAST_Q_OOD = ["What is the number of {obj} that {B} owns?"]


def _chain(rng: random.Random, n_steps: int, names: list[str], ood: bool) -> Problem:
    """A has x; each next person is defined relative to the previous one; the last step asks either
    for the last person's count or for the total of the last two (one extra addition)."""
    ask_total = n_steps >= 2 and rng.random() < 0.5
    n_rel = n_steps - 1 if ask_total else n_steps  # relations; the total is the last step
    people = rng.sample(names, n_rel + 1)
    obj = rng.choice(OBJECTS)
    vals = [rng.randint(2, 25)]
    q = [f"{people[0]} has {vals[0]} {obj}."]
    a = []
    for i in range(n_rel):
        A, B, x = people[i], people[i + 1], vals[-1]
        fmt = {"A": A, "B": B, "obj": obj}
        cap = MAX_VALUE // 2 if ask_total and i == n_rel - 1 else MAX_VALUE  # keep the sum small
        kinds = ["more"] * 2 + ["fewer"] * 2
        if 2 * x <= cap:
            kinds.append("twice")
        if x % 2 == 0:
            kinds.append("half")
        kind = rng.choice(kinds)
        if kind == "more" and x < cap:
            n = rng.randint(1, min(12, cap - x))
            y, line = x + n, f"{B} has {x} + {n} = {x + n} {obj}."
            q.append(rng.choice(MORE_Q).format(n=n, **fmt))
        elif kind in ("more", "fewer") and x >= 2:
            n = rng.randint(1, min(12, x - 1))
            y, line = x - n, f"{B} has {x} - {n} = {x - n} {obj}."
            q.append(rng.choice(FEWER_Q).format(n=n, **fmt))
        elif kind == "twice":
            y, line = 2 * x, f"{B} has {x} * 2 = {2 * x} {obj}."
            q.append(rng.choice(TWICE_Q).format(**fmt))
        elif kind == "half":
            y, line = x // 2, f"{B} has {x} / 2 = {x // 2} {obj}."
            q.append(rng.choice(HALF_Q).format(**fmt))
        else:  # x too small/large for the chosen kind: a small 'more' always fits (x <= cap - 1 here)
            n = 1
            y, line = x + n, f"{B} has {x} + {n} = {x + n} {obj}."
            q.append(rng.choice(MORE_Q).format(n=n, **fmt))
        vals.append(y)
        a.append(line)
    if ask_total and n_rel >= 1:
        A, B = people[-2], people[-1]
        total = vals[-2] + vals[-1]
        q.append(rng.choice(TOTAL_Q_OOD if ood else TOTAL_Q).format(A=A, B=B, obj=obj))
        a.append(f"Together they have {vals[-2]} + {vals[-1]} = {total} {obj}.")
        final = total
    else:
        q.append(rng.choice(LAST_Q_OOD if ood else LAST_Q).format(B=people[-1], obj=obj))
        final = vals[-1]
    a.append(f"#### {final}")
    return Problem(" ".join(q), "\n".join(a), final)


# ------------------------------------------------------------------ story family 3: shopping / change
SHOP_Q = [
    "{N} buys {k} {item} that cost {c} dollars each.",
    "{N} gets {k} {item} at {c} dollars apiece.",
]
SHOP_EXTRA = ["{P} also buys a {thing} for {d} dollars.", "{P} then pays {d} dollars for a {thing}."]
SHOP_FINAL = ["{P} pays with {m} dollars. How much change does {p} get?"]
SHOP_FINAL_OOD = ["{P} hands over {m} dollars. What is the change {p} receives?"]
ITEMS = ["pens", "cups", "kites", "hats", "mugs", "socks", "toy cars", "notebooks"]
THINGS = ["ball", "bag", "card", "drink", "map"]


def _shop(rng: random.Random, n_steps: int, names: list[str], ood: bool) -> Problem:
    """k items at c each (1 step), n_steps - 2 extra purchases, then change from m (1 step)."""
    name = rng.choice(names)
    p, _ = _pron(name)
    fmt = {"N": name, "P": _cap(p), "p": p}
    n_extra = max(0, n_steps - 2)
    while True:
        k, c = rng.randint(2, 6), rng.randint(2, 9)
        extras = [rng.randint(2, 15) for _ in range(n_extra)]
        total = k * c + sum(extras)
        if total <= 90:
            break
    m = rng.choice([v for v in (10, 20, 50, 60, 80, 90, 99) if v >= total] or [99])
    item = rng.choice(ITEMS)
    q = [rng.choice(SHOP_Q).format(k=k, c=c, item=item, **fmt)]
    a = [f"The {item} cost {k} * {c} = {k * c} dollars."]
    spent = k * c
    for d in extras:
        thing = rng.choice(THINGS)
        q.append(rng.choice(SHOP_EXTRA).format(d=d, thing=thing, **fmt))
        a.append(f"With the {thing}, {p} spends {spent} + {d} = {spent + d} dollars.")
        spent += d
    q.append(rng.choice(SHOP_FINAL_OOD if ood else SHOP_FINAL).format(m=m, **fmt))
    a.append(f"The change is {m} - {spent} = {m - spent} dollars.")
    a.append(f"#### {m - spent}")
    return Problem(" ".join(q), "\n".join(a), m - spent)


def sample_problem(rng: random.Random, split: str) -> Problem:
    """One problem of ``split``'s distribution (rejection-sampled until every value is in range)."""
    while True:
        prob = _sample_once(rng, split)
        if not check_solution(prob.answer, str(prob.final)):
            return prob


def _sample_once(rng: random.Random, split: str) -> Problem:
    lo, hi = STEPS[split]
    shifts = OOD_SHIFTS if split == "test_ood" else ()
    if "steps" not in shifts and split == "test_ood":
        lo, hi = STEPS["test_id"]
    n_steps = rng.randint(lo, hi)
    ood = "phrasing" in shifts
    names = OOD_NAMES if "names" in shifts else NAMES
    family = rng.choices(["running", "chain", "shop"], weights=[3, 2, 1])[0]
    if family == "running":
        return _running(rng, n_steps, names, FINAL_Q_OOD if ood else FINAL_Q)
    if family == "chain":
        return _chain(rng, max(n_steps, 1), names, ood)
    if n_steps < 2:  # shopping needs >= 2 steps; fall back to a one-step running story
        return _running(rng, n_steps, names, FINAL_Q)
    return _shop(rng, n_steps, names, ood)


def generate(split: str, n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """``n`` distinct problems of ``split`` (no question repeated, none in ``exclude``), as JSON dicts."""
    if split not in STEPS:
        raise ValueError(f"unknown math split {split!r}; valid: {sorted(STEPS)}")
    rng = random.Random(f"toy-math/{seed}/{split}")
    return distinct(lambda: sample_problem(rng, split).to_json(), n, exclude, f"math/{split}")


def iter_pretrain_problems(seed: int, exclude: set[str]) -> Iterator[dict]:
    """Endless stream of pre-training problems (1-3 steps), none whose question is in ``exclude``."""
    rng = random.Random(f"toy-math/{seed}/pretrain")
    return endless(lambda: sample_problem(rng, "pretrain").to_json(), exclude)


# -------------------------------------------------------------------------- independent checking
LINE_RE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def check_solution(answer: str, final: str) -> list[str]:
    """Problems found in a solution (empty list = correct): each ``a op b = c`` must hold, values must be
    in range, the last line must be ``#### final`` and equal the last computed result."""
    errors = []
    lines = answer.split("\n")
    last = None
    for line in lines[:-1]:
        for a, op, b, c in LINE_RE.findall(line):
            a, b, c = int(a), int(b), int(c)
            val = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
            if val != c:
                errors.append(f"wrong arithmetic: {line!r}")
            if not all(0 <= v <= MAX_VALUE for v in (a, b, c)):
                errors.append(f"value out of range: {line!r}")
            last = c
    if lines[-1] != f"#### {final}":
        errors.append(f"last line {lines[-1]!r} != '#### {final}'")
    if last is None or str(last) != final:
        errors.append(f"final {final} != last result {last}")
    return errors


# ----------------------------------------------------------------------- pre-training text formats
def arithmetic_drill(rng: random.Random, n_facts: int = 10) -> str:
    """Plain facts 'a op b = c' (the skill the solutions need), one per line."""
    lines = []
    for _ in range(n_facts):
        op = rng.choice("+-*/")
        if op == "+":
            a = rng.randint(0, MAX_VALUE)
            b = rng.randint(0, MAX_VALUE - a)
            c = a + b
        elif op == "-":
            a = rng.randint(0, MAX_VALUE)
            b = rng.randint(0, a)
            c = a - b
        elif op == "*":
            a, b = rng.randint(0, 12), rng.randint(0, 9)
            if rng.random() < 0.5:
                a, b = b, a
            c = a * b
        else:
            b = rng.randint(1, 5)
            c = rng.randint(0, MAX_VALUE // b)
            a = b * c
        lines.append(f"{a} {op} {b} = {c}")
    return "\n".join(lines)
