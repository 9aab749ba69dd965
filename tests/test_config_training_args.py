"""The committed TrainingArguments table (harness/config/training_args.py) against the installed transformers.

Planning checks ``training:`` against a generated table instead of importing transformers; these tests keep
the table honest: it must be what the generator makes of the installed transformers, and its checks must
give what pydantic gives on the real annotations.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import typing
from typing import Literal

import pytest
from pydantic import TypeAdapter, ValidationError

from harness.config import training_args
from harness.config.training_args import training_argument_names, training_value_problem
from harness.config.training_args_gen import REGENERATE, _check_round_trip, _render, committed, generate

# YAML-shaped values (scalars, lists, mappings, a date) plus the strings the check singles out.
VALUES = [
    None, True, False, 0, 1, -1, 1.5, 1e-3, float("inf"), "1e-3", "1.0e-3", "steps", "no", "cosine",
    "adamw_torch", "abc", "", "5", [], [1], ["a"], ["underflow_overflow"], {}, {"a": 1}, {"tp_size": "x"},
    datetime.date(2020, 1, 1),
]  # fmt: skip


def test_committed_table_is_what_the_installed_transformers_gives():
    import transformers

    assert committed() == generate(), (
        f"harness/config/training_args.py (generated from transformers {training_args.TRANSFORMERS_VERSION}) "
        f"differs from what the installed transformers {transformers.__version__} gives: run `{REGENERATE}` "
        "and review the diff"
    )


def _reference_problem(hint: object, value: object) -> str | None:
    """What the check said when it reflected over transformers itself (the code the table replaced)."""
    try:
        TypeAdapter(hint).validate_python(value, strict=isinstance(value, str))
    except ValidationError as e:
        expected = e.errors()[0]["msg"].removeprefix("Input should be ")
        hint_ = " (YAML reads 1e-3 as a string: write 1.0e-3)" if isinstance(value, str) else ""
        return f"expected {expected}, got {value!r}{hint_}"
    return None


def test_checks_match_pydantic_on_the_real_annotations():
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    assert training_argument_names() == {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    wrong = []
    for name in sorted(training_argument_names()):
        for value in VALUES:
            want, got = (
                _reference_problem(hints[name], value),
                training_value_problem.__wrapped__(name, value),
            )
            if want != got:
                wrong.append(f"{name}={value!r}: table says {got!r}, transformers {want!r}")
    assert not wrong, "\n".join(wrong[:20])


def test_messages_name_what_was_expected():
    assert training_value_problem("learning_rate", "1e-3") == (
        "expected a valid number, got '1e-3' (YAML reads 1e-3 as a string: write 1.0e-3)"
    )
    assert training_value_problem("eval_strategy", 5) == "expected 'no', 'steps' or 'epoch', got 5"
    assert training_value_problem("learning_rate", 1e-3) is None
    assert training_value_problem("lr_scheduler_type", "cosine") is None
    assert training_value_problem("no_such_field", 1) is None  # RunConfig names unknown fields


class _Color(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class _Inner:
    flag: bool = False


@dataclasses.dataclass
class _Outer:
    size: int
    color: _Color | None = None
    mode: Literal["a", "b"] = "a"
    inner: None | _Inner = None
    hidden: int = dataclasses.field(init=False, default=0)
    tags: list[str] = dataclasses.field(default_factory=list, kw_only=True)


def test_generator_renders_enums_dataclasses_and_keeps_union_order():
    stubs: dict[str, str] = {}
    assert _render(None | str | list[_Color], stubs, "x") == "None | str | list[_Color]"
    assert _render(_Outer | dict[str, typing.Any], stubs, "y") == "_Outer | dict[str, Any]"
    assert list(stubs) == ["_Color", "_Inner", "_Outer"]  # a stand-in after those it refers to
    assert stubs["_Color"] == 'class _Color(str, enum.Enum):\n    RED = "red"\n    BLUE = "blue"'
    assert "    hidden: int = dataclasses.field(init=False, default=0)" in stubs["_Outer"]
    assert "    tags: list[str] = dataclasses.field(kw_only=True, default=None)" in stubs["_Outer"]
    with pytest.raises(TypeError, match="cannot describe"):
        _render(datetime.date, {}, "z")


def test_generated_source_round_trips():
    hints = {"a": _Outer | None, "b": str | None | Literal[False], "c": dict | str | None}
    stubs: dict[str, str] = {}
    rows = "\n".join(f"    {k!r}: {_render(v, stubs, k)}," for k, v in hints.items())
    block = "\n\n".join([*stubs.values(), "TYPES = {\n" + rows + "\n}"])
    _check_round_trip(block, hints)
    with pytest.raises(TypeError, match="round-trip"):
        _check_round_trip(block.replace("str | None | Literal[False]", "str | Literal[False] | None"), hints)
