"""A right answer per paper task, in the form the task's own prompt asks for, scored by the task's own
filters and metric: a stand-in model's zeros mean "wrong answers", never "output the task cannot score".

``score(task, doc)`` renders the gold answer as a model following the task's few-shot format would write
it, passes it through each of the task's filter pipelines as lm-eval does (``FilterEnsemble.apply`` on an
``Instance``) and returns ``process_results`` per filter.
"""

from __future__ import annotations

from typing import Any


def right_answer(task: Any, doc: dict[str, Any]) -> str:
    """What a model that follows the task's format answers when it is right."""
    name = task.get_config("task")
    if name.startswith("humaneval"):
        return doc["canonical_solution"]
    if name.startswith("mbpp"):
        return doc["code"] + "\n"
    target = str(task.doc_to_target(doc)).strip()
    if name.startswith("minerva_math"):
        return f"$\\boxed{{{doc['answer']}}}$.\nFinal Answer: The final answer is ${doc['answer']}$. I hope it is correct."
    if name.startswith("aime"):
        return f"The answer is $\\boxed{{{target}}}$."
    if name.startswith(("mmlu_pro", "bbh", "gsm8k")):
        target = doc["answer"] if name.startswith("mmlu_pro") else target
        wrapped = f"({target})" if name.startswith("mmlu_pro") else target
        return (
            f"Step by step. So the answer is {wrapped}."
            if not name.startswith("gsm8k")
            else f"So 3 + 4. The answer is {target}."
        )
    if name.startswith("gpqa"):
        return f"Let's see. The answer is {target}."
    return f" {target}"  # arc_challenge_chat: the letter after its gen_prefix


def score(
    task: Any, doc: dict[str, Any], doc_id: int = 0, response: str | None = None
) -> dict[str, dict[str, Any]]:
    """filter name -> the task's metrics for ``response`` (default: ``right_answer``), through lm-eval's own
    filters and ``process_results``."""
    from lm_eval.api.instance import Instance

    inst = Instance(
        request_type="generate_until",
        doc=doc,
        arguments=("", {}),
        idx=0,
        metadata=(task.get_config("task"), doc_id, 1),
    )
    inst.resps = [right_answer(task, doc) if response is None else response]
    out = {}
    for ensemble in task._filters:  # lm-eval keeps a task's filter pipelines here (Task.apply_filters)
        ensemble.apply([inst])
        out[ensemble.name] = task.process_results(doc, [inst.filtered_resps[ensemble.name]])
    return out
