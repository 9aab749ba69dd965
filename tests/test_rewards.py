"""GRPO's verifiable rewards (harness/training/rewards.py) on hand-made completions: right, wrong,
malformed, missing answer — the toy ``#### N`` reward against the toy lm-eval task's own filter and metric,
and the math-verify reward (TRL's ``accuracy_reward``) on ``\\boxed{}`` answers."""

from __future__ import annotations

import pytest
import yaml

from harness import paths
from harness.training import rewards

REF = "Ivy starts with 19 stamps.\nNow she has 19 + 12 = 31.\n#### 31"  # a toy math reference


def _toy(completions: list, references: list[str] | None = None) -> list[float | None]:
    return rewards.toy_reward(completions, references or [REF] * len(completions))


# ------------------------------------------------------------------------------------------------- toy
@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        (" Ivy starts with 19 stamps.\nNow she has 31.\n#### 31", 1.0),  # right
        (" 19 + 12 = 31\n#### 31\nQuestion: next", 1.0),  # right, then a new question (cut off)
        (" #### 31 and later #### 7", 1.0),  # the FIRST answer counts, as the task's take_first
        (" Now she has 30.\n#### 30", 0.0),  # wrong
        (" #### 310", 0.0),  # wrong (no prefix match)
        (" #### -31", 0.0),  # wrong sign
        (" #### 7 then #### 31", 0.0),  # the first answer is wrong
        (" ####31", 0.0),  # malformed: no space
        (" #### thirty-one", 0.0),  # malformed: not a number
        (" # 31", 0.0),  # malformed marker
        (" the answer is 31", 0.0),  # missing answer marker
        ("", 0.0),  # empty completion
        (" Now she has 31.\n\n#### 31", 0.0),  # the answer comes after the stop sequence: never scored
        (" Question: #### 31", 0.0),  # likewise after "Question:"
    ],
)
def test_toy_reward_on_hand_made_completions(completion, reward):
    assert _toy([completion]) == [reward]


def test_toy_reward_reads_both_completion_forms_and_ignores_trl_kwargs():
    conversational = [[{"role": "assistant", "content": " #### 31"}], [{"role": "assistant", "content": "x"}]]
    out = rewards.toy_reward(
        conversational,
        [REF, REF],
        prompts=["p", "p"],
        completion_ids=[[1], [2]],
        trainer_state=None,
        log_extra=lambda *a: None,
        log_metric=lambda *a: None,
    )
    assert out == [1.0, 0.0]


def test_toy_reward_skips_a_reference_without_answer_and_preflight_names_it():
    assert _toy([" #### 31", " #### 31"], [REF, "no final answer here"]) == [1.0, None]
    assert rewards.reference_problem("toy", "no final answer here").startswith("has no '#### N'")
    assert rewards.reference_problem("toy", REF) is None
    assert rewards.reference_problem("math_verify", "anything") is None  # parsed during training
    assert rewards.reference_answer("a\n#### 5\nb\n#### -12") == "-12"  # the reference's LAST answer


def test_toy_reward_is_the_toy_tasks_score():
    """Reward 1 exactly where lm-eval's strict-match filter + exact match (with the task's own settings,
    read from its YAML) scores the completion, cut at the task's stop sequences, as right."""
    from lm_eval.api.registry import get_metric
    from lm_eval.filters.extraction import RegexFilter

    task = yaml.safe_load((paths.evaluation_dir() / "tasks" / "toy" / "_toy_math_template_yaml").read_text())
    until = task["generation_kwargs"]["until"]
    assert tuple(until) == rewards.TOY_STOP
    (regex,) = [f for f in task["filter_list"][0]["filter"] if f["function"] == "regex"]
    assert regex["regex_pattern"] == rewards.FINAL_RE.pattern
    target = task["doc_to_target"].replace("{{answer}}", REF)
    ignore = task["metric_list"][0]["regexes_to_ignore"]
    completions = [
        " #### 31",
        " #### 30",
        " ####31",
        " 31",
        " ok\n\n#### 31",
        " #### 31 #### 2",
        " Question: #### 31",
        " #### 3",
    ]
    cut = []
    for c in completions:
        for s in until:
            c = c.split(s, 1)[0]
        cut.append([c])
    extracted = RegexFilter(regex_pattern=regex["regex_pattern"], group_select=0).apply(cut, [{}] * len(cut))
    exact = get_metric("exact_match")
    scores = [
        float(exact(predictions=[e[0]], references=[target], regexes_to_ignore=ignore)["exact_match"])
        for e in extracted
    ]
    assert _toy(completions) == scores
    assert scores == [1.0, 0, 0, 0, 0, 1.0, 0, 0]


# ----------------------------------------------------------------------------------------- math_verify
@pytest.mark.parametrize(
    ("completion", "reference", "reward"),
    [
        (r"So the answer is $\boxed{\frac{1}{3}}$.", r"\frac{1}{3}", 1.0),  # right
        (r"We get \boxed{2/6}", r"\frac{1}{3}", 1.0),  # right, another form of the same number
        (r"Hence \boxed{10}.", r"The total is $\boxed{10}$.", 1.0),  # right against a full solution
        (r"So the answer is \boxed{\frac{1}{2}}", r"\frac{1}{3}", 0.0),  # wrong
        (r"Hence \boxed{11}.", r"The total is $\boxed{10}$.", 0.0),  # wrong
        (r"So \boxed{\frac{1}{3}", r"\frac{1}{3}", 0.0),  # malformed: unclosed box
        (r"the answer is one third", r"\frac{1}{3}", 0.0),  # missing: no LaTeX answer
        ("", r"\frac{1}{3}", 0.0),  # empty completion
        (r"\boxed{5}", "no number at all", None),  # unparseable reference: skipped
    ],
)
def test_math_verify_reward_on_boxed_answers(completion, reference, reward):
    assert rewards.math_verify_reward([completion], [reference]) == [reward]


def test_math_verify_reward_takes_conversational_completions():
    msgs = [
        [{"role": "assistant", "content": r"\boxed{4}"}],
        [{"role": "assistant", "content": r"\boxed{5}"}],
    ]
    assert rewards.math_verify_reward(msgs, ["4", "4"], prompts=["p", "p"], trainer_state=None) == [1.0, 0.0]


# ---------------------------------------------------------------------------------------- selection
def test_reward_selection():
    assert rewards.resolve_reward("auto", "toy:math/train") == "toy"
    assert rewards.resolve_reward("auto", "AI-MO/NuminaMath-CoT") == "math_verify"
    assert rewards.resolve_reward("toy", "/data/gsm8k.jsonl") == "toy"
    assert rewards.reward_function("toy") is rewards.toy_reward
    assert rewards.reward_function("math_verify") is rewards.math_verify_reward
    with pytest.raises(Exception, match="unknown reward 'x'"):
        rewards.reward_function("x")
