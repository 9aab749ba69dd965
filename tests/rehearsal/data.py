"""Stand-in data: a handful of rows in the exact schema of each paper training set and each paper task's
dataset, generated here (nothing downloaded), and the ``eval.dataset_overrides`` that point lm-eval's own
tasks at them.

Schemas (field names and types as the datasets ship them; content is small arithmetic):
- ``AI-MO/NuminaMath-CoT`` (train): problem, solution, messages [{role, content}], source;
- ``open-r1/OpenR1-Math-220k`` (``default``, train): problem, solution, answer, problem_type,
  question_type, source, uuid, is_reasoning_complete, generations, correctness_math_verify,
  correctness_llama, finish_reasons, correctness_count, messages;
- lm-eval tasks, by their YAML's ``dataset_path`` (split names as the YAML reads them): ``openai/gsm8k``
  (test: question, answer with ``#### N``), ``HuggingFaceH4/MATH-500`` (test: problem, solution, answer,
  subject, level, unique_id), ``Maxwell-Jia/AIME_2024`` (train: ID, Problem, Solution, Answer),
  ``TIGER-Lab/MMLU-Pro`` (test + validation, the few-shot split, filtered by category: question_id,
  question, options, answer, answer_index, cot_content, category, src), ``Idavidrein/gpqa`` (train:
  Question, Correct Answer, Incorrect Answer 1-3, ...), ``allenai/ai2_arc`` (train/validation/test: id,
  question, choices {text, label}, answerKey), ``SaylorTwift/bbh`` (test: input, target; one file for
  all 27 subtasks through the group's key), ``evalplus/humanevalplus`` (test: task_id, prompt,
  canonical_solution, entry_point, test), ``evalplus/mbppplus`` (test: task_id, code, prompt, source_file,
  test_imports, test_list, test).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MMLU_PRO_CATEGORIES = [
    "biology", "business", "chemistry", "computer science", "economics", "engineering", "health",
    "history", "law", "math", "other", "philosophy", "physics", "psychology",
]  # fmt: skip


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path.resolve())


def _sums(n: int, offset: int = 0) -> list[tuple[int, int, int]]:
    return [(a, b, a + b) for a, b in ((3 + i + offset, 4 + 2 * i) for i in range(n))]


# ------------------------------------------------------------------------------------ training sets


def numina_rows(n: int = 8) -> list[dict[str, Any]]:
    rows = []
    for a, b, c in _sums(n):
        problem = f"Tom has {a} apples and buys {b} more. How many apples does he have?"
        solution = f"Tom has {a} + {b} = {c} apples. The answer is $\\boxed{{{c}}}$."
        rows.append(
            {
                "problem": problem,
                "solution": solution,
                "messages": [
                    {"content": problem, "role": "user"},
                    {"content": solution, "role": "assistant"},
                ],
                "source": "synthetic_math",
            }
        )
    return rows


def openr1_rows(n: int = 8) -> list[dict[str, Any]]:
    rows = []
    for i, (a, b, c) in enumerate(_sums(n, offset=1)):
        problem = f"Find $x$ if $x - {b} = {a}$."
        solution = f"Adding {b} to both sides, $x = {a} + {b} = {c}$."
        trace = f"<think>\nWe need x - {b} = {a}, so x = {c}.\n</think>\nSo $x = \\boxed{{{c}}}$."
        rows.append(
            {
                "problem": problem,
                "solution": solution,
                "answer": str(c),
                "problem_type": "Algebra",
                "question_type": "math-word-problem",
                "source": "olympiads",
                "uuid": f"00000000-0000-0000-0000-{i:012d}",
                "is_reasoning_complete": [True, True],
                "generations": [trace, trace],
                "correctness_math_verify": [True, True],
                "correctness_llama": None,
                "finish_reasons": None,
                "correctness_count": 2,
                "messages": [{"content": problem, "role": "user"}, {"content": trace, "role": "assistant"}],
            }
        )
    return rows


def write_training_set(kind: str, root: Path) -> str:
    """``numina`` or ``openr1``: the stand-in train split as JSON lines; returns its absolute path."""
    rows = numina_rows() if kind == "numina" else openr1_rows()
    return _write(root / f"{kind}_train.jsonl", rows)


# ---------------------------------------------------------------------------------------- eval tasks


def _gsm8k(n: int) -> list[dict[str, Any]]:
    return [
        {
            "question": f"Ann has {a} pens and gets {b} more. How many pens?",
            "answer": f"{a}+{b}={c}\n#### {c}",
        }
        for a, b, c in _sums(n)
    ]


def _math500(n: int) -> list[dict[str, Any]]:
    return [
        {
            "problem": f"Compute ${a} + {b}$.",
            "solution": f"We add: ${a} + {b} = \\boxed{{{c}}}$.",
            "answer": str(c),
            "subject": "Prealgebra",
            "level": 1,
            "unique_id": f"test/prealgebra/{i}.json",
        }
        for i, (a, b, c) in enumerate(_sums(n))
    ]


def _aime(n: int) -> list[dict[str, Any]]:
    return [
        {
            "ID": f"2024-I-{i + 1}",
            "Problem": f"Find {a} times {b}.",
            "Solution": f"{a}*{b}={a * b}",
            "Answer": a * b,
        }
        for i, (a, b, _) in enumerate(_sums(n))
    ]


def _mmlu_pro(per_category: int, start: int) -> list[dict[str, Any]]:
    rows = []
    for k, category in enumerate(MMLU_PRO_CATEGORIES):
        for j in range(per_category):
            a, b = 2 + j, 3 + k
            options = [str(a + b + d) for d in range(-2, 8)]  # ten options, the right one third
            rows.append(
                {
                    "question_id": start + k * per_category + j,
                    "question": f"({category}) What is {a} + {b}?",
                    "options": options,
                    "answer": "C",
                    "answer_index": 2,
                    "cot_content": f"A: Let's think step by step. {a} + {b} = {a + b}. The answer is (C).",
                    "category": category,
                    "src": f"stand-in-{category.replace(' ', '_')}",
                }
            )
    return rows


def _gpqa(n: int) -> list[dict[str, Any]]:
    return [
        {
            "Pre-Revision Question": f"What is {a} + {b}?",
            "Question": f"What is {a} + {b}?",
            "Correct Answer": str(c),
            "Incorrect Answer 1": str(c + 1),
            "Incorrect Answer 2": str(c + 2),
            "Incorrect Answer 3": str(c - 1),
            "Explanation": f"{a} + {b} = {c}",
            "Record ID": f"rec{i}",
            "High-level domain": "Physics",
            "Subdomain": "Arithmetic",
        }
        for i, (a, b, c) in enumerate(_sums(n))
    ]


def _arc(n: int, split: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{split}_{i}",
            "question": f"Which number is {a} + {b}?",
            "choices": {"text": [str(c - 1), str(c), str(c + 1), str(c + 2)], "label": ["A", "B", "C", "D"]},
            "answerKey": "B",
        }
        for i, (a, b, c) in enumerate(_sums(n))
    ]


def _bbh(n: int) -> list[dict[str, Any]]:
    exprs = [("not ( True ) and ( True ) is", "False"), ("True or not False and True is", "True")]
    return [{"input": exprs[i % 2][0], "target": exprs[i % 2][1]} for i in range(n)]


def _humaneval(n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        name = f"add_{i}"
        prompt = f'def {name}(a: int, b: int) -> int:\n    """Return a + b + {i}."""\n'
        rows.append(
            {
                "task_id": f"HumanEval/{i}",
                "prompt": prompt,
                "canonical_solution": f"    return a + b + {i}\n",
                "entry_point": name,
                "test": f"\n\ndef check(candidate):\n    assert candidate(1, 2) == {3 + i}\n",
            }
        )
    return rows


def _mbpp(n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        tests = [f"assert add_{i}({a}, {a}) == {2 * a + i}" for a in (1, 2, 3)]
        rows.append(
            {
                "task_id": 2 + i,
                "code": f"def add_{i}(a, b):\n    return a + b + {i}",
                "prompt": f"Write a function add_{i} that returns a + b + {i}.",
                "source_file": "stand-in.txt",
                "test_imports": [],
                "test_list": tests,
                "test": "\n".join(tests),
            }
        )
    return rows


def write_task_data(root: Path, n: int = 4) -> dict[str, dict[str, Any]]:
    """Stand-in documents for every task of the paper suite; returns ``eval.dataset_overrides`` (task or
    group -> {dataset_path: json, dataset_kwargs: {data_files: {split: path}}})."""

    def location(**splits: list[dict[str, Any]]) -> dict[str, Any]:
        files = {split: _write(root / f"{task}_{split}.jsonl", rows) for split, rows in splits.items()}
        return {"dataset_path": "json", "dataset_kwargs": {"data_files": files}}

    out: dict[str, dict[str, Any]] = {}
    for task, splits in {
        "gsm8k_cot": {"test": _gsm8k(n)},
        "minerva_math500": {"test": _math500(n)},
        "aime24": {"train": _aime(n)},
        "mmlu_pro": {"test": _mmlu_pro(1, 0), "validation": _mmlu_pro(5, 1000)},
        "gpqa_diamond_cot_zeroshot": {"train": _gpqa(n)},
        "arc_challenge_chat": {s: _arc(n, s) for s in ("train", "validation", "test")},
        "bbh_cot_fewshot": {"test": _bbh(n)},
        "humaneval_plus": {"test": _humaneval(n)},
        "mbpp_plus": {"test": _mbpp(n)},
    }.items():
        out[task] = location(**splits)
    return out


def corpus() -> list[str]:
    """Text the stand-in tokenizers are trained on: every stand-in document's text, and the text of the
    paper tasks' own YAMLs (:func:`task_text`), of which their prompts are mostly made."""
    texts = [json.dumps(r) for r in numina_rows() + openr1_rows()]
    texts += [json.dumps(r) for r in _gsm8k(4) + _math500(4) + _aime(4) + _mmlu_pro(1, 0)]
    texts += [json.dumps(r) for r in _gpqa(4) + _arc(4, "x") + _bbh(4) + _humaneval(4) + _mbpp(4)]
    return texts + task_text("paper")


def task_text(suite: str) -> list[str]:
    """Every string in the lm-eval task YAMLs of ``suite``'s entries (groups expanded; includes merged):
    few-shot examples (BBH's 3-shot chains of thought, GSM8K's 8 shots), templates, instructions.

    Why the tokenizers learn it: trained on the documents alone, they spend ~1.5 characters per token on
    these prompts, where the real ones spend ~4; with it ~3.2 (BBH's prompts: ~1,500 tokens, not ~4,000).
    The prompts are then about as long in tokens as the real models see them, and the evaluations about
    twice as cheap (attention is quadratic in the length)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from harness.config.suites import load_suite
    from harness.eval.entries import include_path
    from harness.eval.task_data import group_members
    from harness.eval.task_index import task_manager

    spec = load_suite(suite)
    index = task_manager(include_path(spec, None), spec.builtin_tasks).task_index
    files = set()
    for entry in spec.tasks:
        leaves, groups = group_members(index, entry.task)
        files |= {index[name].yaml_path for name in leaves | groups if index[name].yaml_path is not None}

    texts: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    for file in sorted(files):
        collect(load_yaml(file, resolve_func=False))
    return texts
