"""The toy "code" domain: two generated task families over tiny Python functions.

- ``code_output`` (CRUXEval-O style): a short function and a call are given; the model predicts what
  the program prints. The reference answer is an execution trace, one line per statement, ending in
  ``#### N`` (scored like math: the first ``#### N`` must equal the printed value).
- ``code_function`` (HumanEval style): a signature and a docstring are given; the model writes the
  body, which is scored by executing hidden unit tests in :mod:`harness.eval.sandbox`.

Every item is a pure function of ``(seed, split)``. Splits: ``train`` / ``val`` / ``test_id`` share a
distribution; ``test_ood`` adds one more statement (output prediction) or one more arithmetic step
(function writing), each of a kind seen in training. All values stay in 0..99.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from ..config.toy import PROMPT
from .sampling import distinct, endless

MAX_VALUE = 99
# statements per program / arithmetic steps per function, by split
# (toy-v4 had 2-3 statements in distribution: its base scored 1.5-7%; one or two keep it above chance)
OUTPUT_STEPS = {"train": (1, 2), "val": (1, 2), "test_id": (1, 2), "test_ood": (3, 3), "pretrain": (1, 2)}
FUNCTION_STEPS = {"train": (1, 2), "val": (1, 2), "test_id": (1, 2), "test_ood": (3, 3), "pretrain": (1, 2)}
FUNC_NAMES = ["f", "g", "h", "calc", "step", "work", "apply", "run"]
VARS = ["y", "z", "a", "b", "n", "t", "v", "w"]
ARGS = ["x", "n", "num", "value", "k", "m"]
OUTPUT_QUESTION = "What does this program print?\n{code}"


# ------------------------------------------------------------------------------- output prediction
def _statement(rng: random.Random, var: str, y: int) -> tuple[str, list[str], int]:
    """One statement updating ``var`` (current value ``y``): (code lines, trace lines, new value)."""
    kinds = ["add", "sub", "if"]
    if y <= MAX_VALUE // 2:
        kinds.append("mul")
    if y >= 4:
        kinds.append("div")
    if y + 2 * 9 <= MAX_VALUE:
        kinds.append("loop")
    kind = rng.choice(kinds)
    if kind == "add" or (kind == "sub" and y < 1):
        n = rng.randint(1, min(15, MAX_VALUE - y)) if y < MAX_VALUE else 0
        return f"    {var} = {var} + {n}", [f"{var} = {y} + {n} = {y + n}"], y + n
    if kind == "sub":
        n = rng.randint(1, min(15, y))
        return f"    {var} = {var} - {n}", [f"{var} = {y} - {n} = {y - n}"], y - n
    if kind == "mul":
        k = rng.randint(2, min(4, MAX_VALUE // max(y, 1)))
        return f"    {var} = {var} * {k}", [f"{var} = {y} * {k} = {y * k}"], y * k
    if kind == "div":
        k = rng.randint(2, 4)
        return f"    {var} = {var} // {k}", [f"{var} = {y} // {k} = {y // k}"], y // k
    if kind == "loop":
        times, n = rng.randint(2, 3), rng.randint(1, 9)
        code = f"    for i in range({times}):\n        {var} = {var} + {n}"
        trace, cur = [], y
        for _ in range(times):
            trace.append(f"{var} = {cur} + {n} = {cur + n}")
            cur += n
        return code, trace, cur
    # if: compare, then add or subtract in the taken branch
    t = rng.randint(max(0, y - 10), y + 10)
    n = rng.randint(1, min(9, y)) if y >= 1 else 0
    code = f"    if {var} > {t}:\n        {var} = {var} - {n}"
    if y > t:
        return code, [f"{y} > {t} is True", f"{var} = {y} - {n} = {y - n}"], y - n
    return code, [f"{y} > {t} is False"], y


def sample_output_problem(rng: random.Random, split: str) -> dict:
    lo, hi = OUTPUT_STEPS[split]
    fname, var, arg = rng.choice(FUNC_NAMES), rng.choice(VARS), rng.choice(ARGS)
    x = rng.randint(0, 20)
    c = rng.randint(0, 9)
    code = [f"def {fname}({arg}):", f"    {var} = {arg} + {c}"]
    trace = [f"{arg} = {x}", f"{var} = {x} + {c} = {x + c}"]
    y = x + c
    for _ in range(rng.randint(lo, hi)):
        line, tr, y = _statement(rng, var, y)
        code.append(line)
        trace += tr
    code += [f"    return {var}", f"print({fname}({x}))"]
    trace.append(f"#### {y}")
    question = OUTPUT_QUESTION.format(code="\n".join(code))
    return {"question": question, "answer": "\n".join(trace), "final": str(y), "program": "\n".join(code)}


# -------------------------------------------------------------------------------- function writing
# (docstring phrase, code template, python function) of one arithmetic step applied to the running value
STEP_KINDS = [
    ("add {c}", "{e} + {c}", lambda v, c: v + c),
    ("subtract {c}", "{e} - {c}", lambda v, c: v - c),
    ("multiply by {c}", "{e} * {c}", lambda v, c: v * c),
]


def sample_function_problem(rng: random.Random, split: str) -> dict:
    lo, hi = FUNCTION_STEPS[split]
    arg = rng.choice(ARGS)
    steps = []
    for _ in range(rng.randint(lo, hi)):
        kind = rng.randrange(len(STEP_KINDS))
        c = rng.randint(2, 5) if kind == 2 else rng.randint(1, 9)
        steps.append((kind, c))
    # The body is a single expression; earlier steps are parenthesised so the order is explicit.
    expr, words = arg, []
    for i, (kind, c) in enumerate(steps):
        phrase, tmpl, _ = STEP_KINDS[kind]
        inner = expr if i == 0 or kind != 2 else f"({expr})"
        expr = tmpl.format(e=inner, c=c)
        words.append(phrase.format(c=c))
    name = "_".join(w.split()[0] for w in words) + f"_{rng.randint(1, 99)}"
    doc = f"Take {arg}, " + ", then ".join(words) + ", and return the result."
    # The prompt stops right after the docstring and the body starts with the newline: a prompt ending
    # in "\n" would split the "\n    " token the model saw in pre-training (a prompt-boundary artefact
    # that made the base write nonsense).
    prompt = f'def {name}({arg}):\n    """{doc}"""'
    body = f"\n    return {expr}\n"

    def reference(v: int) -> int:
        for kind, c in steps:
            v = STEP_KINDS[kind][2](v, c)
        return v

    inputs = rng.sample(range(0, 21), 3)
    tests = "\n".join(f"assert {name}({v}) == {reference(v)}" for v in inputs)
    return {
        "question": prompt,
        "answer": body,
        "entry_point": name,
        "test": tests,
    }


# ------------------------------------------------------------------------------------ shared API
SAMPLERS = {"code_output": sample_output_problem, "code_function": sample_function_problem}


def generate(
    dataset: str, split: str, n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()
) -> list[dict]:
    """``n`` distinct items of ``dataset``/``split`` (no question repeated, none in ``exclude``)."""
    steps = OUTPUT_STEPS if dataset == "code_output" else FUNCTION_STEPS
    if split not in steps:
        raise ValueError(f"unknown {dataset} split {split!r}; valid: {sorted(steps)}")
    rng = random.Random(f"toy-{dataset}/{seed}/{split}")
    return distinct(lambda: SAMPLERS[dataset](rng, split), n, exclude, f"{dataset}/{split}")


def iter_pretrain(dataset: str, seed: int, exclude: set[str]) -> Iterator[dict]:
    """Endless stream of pre-training items of ``dataset`` (repeats allowed), none in ``exclude``."""
    rng = random.Random(f"toy-{dataset}/{seed}/pretrain")
    return endless(lambda: SAMPLERS[dataset](rng, "pretrain"), exclude)


def document(dataset: str, item: dict, rng: random.Random) -> str:
    """A pre-training document for an item: the evaluation format, or source code with its tests."""
    if dataset == "code_output":
        if rng.random() < 0.7:
            return PROMPT.format(question=item["question"]) + " " + item["answer"]
        return f"{item['program']}\n# Trace:\n# " + item["answer"].replace("\n", "\n# ")
    text = item["question"] + item["answer"]
    return text if rng.random() < 0.7 else f"{text}\n\n{item['test']}"
