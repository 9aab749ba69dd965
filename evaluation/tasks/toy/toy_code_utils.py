"""Scoring of the toy code-execution tasks (function writing, HumanEval): run the code in the sandbox.

lm-eval calls ``process_results(doc, results)`` once per document with the greedy completion; the
program is ``prompt + completion`` followed by the tests, executed by :func:`harness.sandbox.run_program`
(a separate limited process: the evaluator continues whatever the program does).
"""

from __future__ import annotations

from harness.sandbox import run_program

TIMEOUT_S = 5.0


def build_program(doc: dict, completion: str) -> str:
    """The program to execute: the task's own prompt, the model's body, then the unit tests.

    Toy function-writing docs carry ``question`` / ``test`` (bare asserts); HumanEval docs carry
    ``prompt`` / ``test`` (defining ``check(candidate)``) / ``entry_point``."""
    if "prompt" in doc:  # HumanEval
        return f"{doc['prompt']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"
    return f"{doc['question']}{completion}\n\n{doc['test']}\n"


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    result = run_program(build_program(doc, results[0]), timeout_s=TIMEOUT_S)
    return {"pass_at_1": float(result.passed)}
