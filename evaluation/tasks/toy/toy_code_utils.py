"""Scoring of the toy code-execution tasks (function writing, HumanEval): run the code in the sandbox.

The tasks' ``execute`` filter (lm-eval ``custom`` filter: it sees every document's completion at once)
builds each program — ``prompt + completion`` followed by the tests — and runs them in parallel, each in
its own :func:`harness.eval.sandbox.run_program` process (separate and limited: the evaluator continues
whatever a program does), in the process's sandbox layer (``eval.sandbox``: bubblewrap where it works,
else the Python guard; the verdicts do not depend on it, tests/test_code_tasks.py). The filtered response is the verdict (``passed``, ``failed``, ``timeout``, ``error``);
``process_results`` turns it into ``pass_at_1``. The raw completions stay in the logged samples.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from harness.eval.sandbox import run_program

TIMEOUT_S = 5.0
# Programs run concurrently, one sandbox process per worker thread: starting an interpreter dominates
# (~0.12 s each), so one per core halves the scoring time of the 364 code-execution items on 2 cores.
WORKERS = max(1, min(8, os.cpu_count() or 1))


def build_program(doc: dict, completion: str) -> str:
    """The program to execute: the task's own prompt, the model's body, then the unit tests.

    Toy function-writing docs carry ``question`` / ``test`` (bare asserts); HumanEval docs carry
    ``prompt`` / ``test`` (defining ``check(candidate)``) / ``entry_point``."""
    if "prompt" in doc:  # HumanEval
        return f"{doc['prompt']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"
    return f"{doc['question']}{completion}\n\n{doc['test']}\n"


def verdict(doc: dict, completion: str) -> str:
    """The sandbox status of the program: ``passed`` (exit status 0), ``failed``, ``timeout`` or ``error``."""
    return run_program(build_program(doc, completion), timeout_s=TIMEOUT_S).status


def execute(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval custom filter: every response of every document replaced by its sandbox verdict."""
    jobs = [(doc, r) for resp, doc in zip(resps, docs, strict=True) for r in resp]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        verdicts = iter(list(pool.map(lambda job: verdict(*job), jobs)))
    return [[next(verdicts) for _ in resp] for resp in resps]


def process_results(doc: dict, results: list[list[str]]) -> dict[str, float]:
    """``results[0]`` is what the ``execute`` filter gave this document: its list of verdicts, one per
    response (lm-eval passes a filter's per-document output as is); the greedy completion is the first."""
    return {"pass_at_1": float(results[0][0] == "passed")}
