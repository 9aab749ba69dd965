"""Execution for the ``*_sandboxed`` variants of lm-eval's humaneval, humaneval_plus, mbpp and mbpp_plus.

Each variant's YAML includes lm-eval's own task YAML (same prompt, stop sequences, few-shot examples,
filters, test code, metric name and k) and replaces one thing: the metric that executes the programs.
lm-eval's metric runs them through HF ``evaluate``'s ``code_eval``, loaded from the Hub when lm-eval's
``utils.py`` is imported, and executes them in the evaluating process, unsandboxed. Here every program
— exactly ``code_eval``'s: ``candidate + "\\n" + test`` — runs in :func:`harness.eval.sandbox.run_program`
(bubblewrap where available, else the Python guard), with ``code_eval``'s default time limit (3 s,
counted from the program's first line) and pass@k estimator.

Offline: lm-eval's YAML names functions of its ``utils.py`` (``build_predictions``,
``list_fewshot_samples``), which lm-eval loads by path, importing the module — and with it the Hub
download. Importing this module (lm-eval does, while reading the variant's YAML, before it reads the
included one) first registers that ``utils.py`` under the name and modification time lm-eval's loader
caches it by (``lm_eval.tasks._yaml_loader._load_module_with_cache``), built from lm-eval's own source
minus the ``evaluate`` import and the code that uses it, its metric functions bound to ours. lm-eval's
prompt and filter functions are therefore its own code, unchanged. (A newer lm-eval that loads modules
otherwise would import the real file and fail offline with evaluate's error: tests/test_code_tasks.py
runs these tasks offline and would catch it.)
"""

from __future__ import annotations

import ast
import math
import os
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.eval.sandbox import run_program

TIMEOUT_S = 3.0  # code_eval's default per program (lm-eval passes none)
WORKERS = max(1, min(8, os.cpu_count() or 1))  # programs of one document (pass@k with k > 1) in parallel


def program(candidate: str, test: str) -> str:
    """The program ``code_eval`` builds: the candidate (HumanEval: prompt + completion, after lm-eval's
    ``build_predictions`` filter; MBPP: the completion) then the test code (lm-eval's target)."""
    return candidate + "\n" + test


def passed(candidate: str, test: str) -> bool:
    """Whether the program ran to its end (exit status 0) within the limits, in the sandbox."""
    return run_program(program(candidate, test), timeout_s=TIMEOUT_S).passed


def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator of ``code_eval`` (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _counts(references: list[str], predictions: list[list[str]]) -> list[tuple[int, int]]:
    """(candidates, correct ones) per problem; every candidate executed in the sandbox."""
    jobs = [(cand, test) for cands, test in zip(predictions, references, strict=True) for cand in cands]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        verdicts = iter(list(pool.map(lambda job: passed(*job), jobs)))
    return [(len(cands), sum(next(verdicts) for _ in cands)) for cands in predictions]


def pass_at_k(
    references: list[str], predictions: list[list[str]], k: list[int] | int | None = None
) -> dict[str, float]:
    """lm-eval humaneval's metric (same arguments, same result): ``{"pass@<k>": mean over problems}``
    for every k that every problem has enough candidates for, as ``code_eval`` computes it."""
    assert k is not None
    ks = [k] if isinstance(k, int) else list(k)
    counts = _counts(references, predictions)
    return {
        f"pass@{kk}": sum(estimate_pass_at_k(n, c, kk) for n, c in counts) / len(counts)
        for kk in ks
        if all(n >= kk for n, _ in counts)
    }


def pass_at_1(references: str | list[str], predictions: str | list[list[str]]) -> float:
    """lm-eval mbpp's metric (same arguments, same result): pass@1 of the candidates against the tests."""
    if isinstance(references, str):
        references = [references]
    if isinstance(predictions[0], str):
        predictions = [[p] for p in predictions]
    return pass_at_k(references, predictions, k=[1])["pass@1"]  # type: ignore[arg-type]


# ---------------------------------------------------------------------- lm-eval's utils.py, offline


def _uses_evaluate(node: ast.stmt) -> bool:
    """A top-level statement that imports HF ``evaluate`` or touches what it bound (``hf_evaluate``)."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        return any(m.partition(".")[0] == "evaluate" for m in modules)
    return any(isinstance(n, ast.Name) and n.id == "hf_evaluate" for n in ast.walk(node))


def install_offline_utils(task_dir: str, metrics: dict[str, object]) -> None:
    """Register lm-eval's ``tasks/<task_dir>/utils.py`` without its ``evaluate`` parts (see the module
    docstring), with ``metrics`` (name -> function) bound in it. Does nothing if lm-eval's loader has
    the module already (then it is the real one, and the variants' YAMLs still use our metric)."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / task_dir / "utils.py"
    name = f"lm_eval.tasks.{task_dir}.utils"  # how lm-eval's loader names a built-in task's module
    if name in sys.modules or not path.is_file():
        return
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    tree.body = [node for node in tree.body if not _uses_evaluate(node)]
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(compile(tree, str(path), "exec"), module.__dict__)  # lm-eval's own source, minus evaluate
    module.__dict__.update(metrics)
    module.__mtime__ = path.stat().st_mtime_ns  # type: ignore[attr-defined]  # lm-eval's cache check
    sys.modules[name] = module


install_offline_utils("humaneval", {"pass_at_k": pass_at_k})
install_offline_utils("mbpp", {"pass_at_1": pass_at_1})
