"""Verifiable rewards of GRPO runs (``objective: {name: grpo, reward: ...}``): completion vs reference answer.

Contract of a reward function, TRL's (``GRPOTrainer`` calls it once per generation batch):
``fn(completions, solution, **kwargs) -> list[float | None]``, one entry per completion, where
``completions[i]`` is the decoded text of completion i (a string for plain prompts, or
``[{"role": "assistant", "content": text}]`` for conversational ones) and ``solution[i]`` the reference
answer of its prompt (the dataset's response field, repeated for the prompt's completions). ``1.0`` is a
right answer, ``0.0`` a wrong, malformed or missing one; ``None`` means the *reference* has no answer
the reward can read: TRL then leaves that completion out of the group statistics instead of training on
a reward that means nothing. Other keyword arguments TRL passes (prompts, completion_ids, trainer state,
logging hooks) are ignored.

* ``toy``: the first ``#### N`` of the completion, cut at the toy tasks' stop sequences, must equal the
  reference's final ``#### N`` as a string — what the toy lm-eval tasks' ``strict-match`` filter and
  exact match score (``evaluation/tasks/toy/_toy_math_template_yaml``; ``tests/test_rewards.py`` pins the
  two together). Works for any data whose references end in ``#### N`` (GSM8K's do too).
* ``math_verify``: TRL's own ``trl.rewards.accuracy_reward`` (math-verify parses the reference, and the
  completion's first ``\\boxed{}`` / LaTeX answer, and checks them for mathematical equivalence). Not a
  parser of ours: the completion text is only wrapped in the message form that function reads.
* ``auto``: ``toy`` for a toy dataset (``toy:...``), else ``math_verify``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

from harness.config import ConfigError
from harness.toy.check import FINAL_RE

# The toy tasks' `until`: lm-eval stops generating at the first of these, so an answer after one of them
# is never scored. The reward cuts the completion at the same place.
TOY_STOP = ("\n\n", "Question:")

Completion = str | list[dict[str, Any]]
RewardFn = Callable[..., list[float | None]]


def completion_text(completion: Completion) -> str:
    """The text of one completion as TRL hands it over: a string, or a one-message conversation."""
    if isinstance(completion, str):
        return completion
    return str(completion[-1]["content"]) if completion else ""


def final_answer(text: str, stop: Sequence[str] = TOY_STOP) -> str | None:
    """The first ``#### N`` of ``text`` cut at the first stop sequence (as lm-eval's generate_until and
    strict-match filter read a completion); ``None`` when there is none."""
    for s in stop:
        text = text.split(s, 1)[0]
    match = FINAL_RE.search(text)
    return match.group(1) if match else None


def reference_answer(reference: str) -> str | None:
    """The answer of a toy-style reference: its LAST ``#### N`` (the task's metric strips everything up to
    the last ``#### ``); ``None`` when it has none."""
    found = FINAL_RE.findall(reference)
    return found[-1] if found else None


def toy_reward(completions: list[Completion], solution: list[str], **kwargs: Any) -> list[float | None]:
    """1.0 where the completion's first ``#### N`` equals the reference's, 0.0 where it differs or is
    missing, ``None`` where the reference has no ``#### N``."""
    rewards: list[float | None] = []
    for completion, reference in zip(completions, solution, strict=True):
        gold = reference_answer(reference)
        rewards.append(None if gold is None else float(final_answer(completion_text(completion)) == gold))
    return rewards


def math_verify_reward(
    completions: list[Completion], solution: list[str], **kwargs: Any
) -> list[float | None]:
    """TRL's ``accuracy_reward`` (math-verify): 1.0 / 0.0, ``None`` where the reference does not parse."""
    from trl.rewards import accuracy_reward

    messages = [[{"role": "assistant", "content": completion_text(c)}] for c in completions]
    return accuracy_reward(messages, list(solution))


REWARDS: dict[str, RewardFn] = {"toy": toy_reward, "math_verify": math_verify_reward}


def resolve_reward(name: str, dataset_path: str) -> str:
    """``auto`` -> ``toy`` for a toy dataset, else ``math_verify``; any other name as it is."""
    if name != "auto":
        return name
    return "toy" if dataset_path.startswith("toy:") else "math_verify"


def reward_function(name: str) -> RewardFn:
    """The reward function of a resolved reward name (``toy`` or ``math_verify``)."""
    if name not in REWARDS:
        raise ConfigError(f"objective.reward: unknown reward {name!r}; valid: auto, {', '.join(REWARDS)}")
    return REWARDS[name]


def check_reward_available(name: str) -> None:
    """``ConfigError`` (one line, the install command) when the reward's library is missing."""
    if name == "math_verify" and importlib.util.find_spec("math_verify") is None:
        raise ConfigError(
            "objective.reward: math_verify needs the math-verify package (pip install 'math-verify[antlr4_13_2]', "
            "or lm-eval[math], which the harness depends on); or use reward: toy for '#### N' answers"
        )


def reference_problem(name: str, reference: str) -> str | None:
    """Why the reward cannot score against ``reference`` (checked before training), or ``None``.

    Only ``toy`` is checked up front (a missing ``#### N`` is a data error); math-verify references are
    parsed during training, and one that does not parse is skipped (``None`` reward), as TRL does.
    """
    if name == "toy" and reference_answer(reference) is None:
        return "has no '#### N' final answer for reward: toy (use reward: math_verify for \\boxed{} answers)"
    return None


__all__ = [
    "REWARDS",
    "TOY_STOP",
    "check_reward_available",
    "completion_text",
    "final_answer",
    "math_verify_reward",
    "reference_answer",
    "reference_problem",
    "resolve_reward",
    "reward_function",
    "toy_reward",
]
