"""The bad-input corpus: malformed sweep files, run configs, suites, data files and command-line flags.

Every case goes through the command a user types (``harness.cli.main``, in process) and must end the same
way: exit code 2, exactly one line on stderr (``error: ...``) that names the culprit (the file, the field,
the example or byte offset), and nothing written — the working directory stays empty, no run directory is
created. Data and training-value cases also prove that no model is loaded (``load_model`` fails the test).

Fast: no toy world. The runs use a tiny word-level tokenizer written to a temporary directory as their
"model" (a tokenizer is all that data validation needs, and no model is ever loaded).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from harness.cli import main

# The 7 data cases and 5 training-value cases of issue 18 are marked (issue) in their ids.
Case = Callable[[Path, Path], list[str]]  # (source dir, tokenizer dir) -> argv


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A tokenizer directory (no model): whitespace words, 'q' and 'a' known, EOS '</s>', no chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "</s>": 1, "q": 2, "a": 3}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    d = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", unk_token="[UNK]").save_pretrained(d)
    return d


GOOD_ROWS = [{"q": "q q", "a": "a a"}, {"q": "q", "a": "a"}]


def _run_cfg(tok: Path, data: Path, dataset: dict | None = None, training: dict | None = None, **top) -> dict:
    return {
        "model": str(tok),
        "dataset": {"path": str(data), "prompt_field": "q", "response_field": "a", **(dataset or {})},
        "objective": {"name": "sft"},
        "training": {"max_steps": 1, "per_device_train_batch_size": 2, **(training or {})},
        **top,
    }


def _jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _file(src: Path, name: str, content: str | bytes) -> Path:
    path = src / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def train_with(
    name: str,
    content: str | bytes | None = None,
    dataset: dict | None = None,
    training: dict | None = None,
    **top,
) -> Case:
    """`otr-harness train` of a run whose data file ``name`` holds ``content`` (default: good rows)."""

    def case(src: Path, tok: Path) -> list[str]:
        data = _file(src, name, _jsonl(GOOD_ROWS) if content is None else content)
        cfg = _run_cfg(tok, data, dataset, training, **top)
        return ["train", str(_file(src, "run.yaml", yaml.safe_dump(cfg))), "--out", "run"]

    return case


def train_cfg(mutate: Callable[[dict], None]) -> Case:
    """`otr-harness train` of a good run config changed by ``mutate``."""

    def case(src: Path, tok: Path) -> list[str]:
        cfg = _run_cfg(tok, _file(src, "data.jsonl", _jsonl(GOOD_ROWS)))
        mutate(cfg)
        return ["train", str(_file(src, "run.yaml", yaml.safe_dump(cfg))), "--out", "run"]

    return case


def _sweep(tok: Path, data: Path) -> dict:
    return {
        "name": "bad",
        "base": _run_cfg(tok, data) | {"objective": None},
        "variants": {"sft": {"objective": {"name": "sft"}}, "otr": {"objective": {"name": "otr", "k": 4}}},
        "seeds": [0, 1],
        "evaluate_base": False,
    }


def sweep(
    action: str, mutate: Callable[[dict], None] = lambda d: None, *flags: str, text: str | None = None
) -> Case:
    """`otr-harness sweep <action>` of a good sweep file changed by ``mutate`` (or the raw ``text``)."""

    def case(src: Path, tok: Path) -> list[str]:
        data = _sweep(tok, _file(src, "data.jsonl", _jsonl(GOOD_ROWS)))
        mutate(data)
        path = _file(src, "bad.yaml", yaml.safe_dump(data) if text is None else text)
        return ["sweep", action, str(path), *flags]

    return case


def sweep_data(name: str, content: str | bytes, **dataset) -> Case:
    """`otr-harness sweep run` whose data file is bad: refused before any run starts."""

    def mutate_in(src: Path) -> Callable[[dict], None]:
        def mutate(d: dict) -> None:
            d["base"]["dataset"].update(path=str(_file(src, name, content)), **dataset)

        return mutate

    def case(src: Path, tok: Path) -> list[str]:
        return sweep("run", mutate_in(src))(src, tok)

    return case


def suite(content: dict | str, command: str = "eval") -> Case:
    """A malformed suite file, through `otr-harness eval MODEL --suite FILE` or `sweep plan`."""

    def case(src: Path, tok: Path) -> list[str]:
        text = content if isinstance(content, str) else yaml.safe_dump(content)
        path = _file(src, "mysuite.yaml", text)
        if command == "eval":
            return ["eval", str(tok), "--suite", str(path)]
        return sweep("plan", lambda d: d["base"].update(eval={"suites": [str(path)]}))(src, tok)

    return case


def argv(*args: str) -> Case:
    return lambda src, tok: [a.replace("{src}", str(src)).replace("{tok}", str(tok)) for a in args]


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            d = d.setdefault(key, {})
        d[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            d = d[key]
        d.pop(last)

    return mutate


ENTRY = {"task": "toy_math_id", "domain": "math", "split": "id", "metric": "exact_match"}
CHAT = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
BROKEN_TEMPLATE = "{% for m in messages %}{{ m['content'] | no_such_filter }}{% endfor %}"
DIR_DATA = "dir-data"  # a directory dataset with a train split only (see the missing-split case)

CASES: list[tuple[str, Case, list[str]]] = [
    # ---- data files (each before the model loads; the seven kinds first)
    ("data-not-utf8 (issue)", train_with("d.jsonl", b'{"q": "caf\xe9", "a": "a"}\n'), ["d.jsonl", "not UTF-8", "byte offset 10", "0xe9"]),
    ("data-jsonl-not-json (issue)", train_with("d.jsonl", '{"q": "q", "a": "a"}\n{"q": "q", "a": }\n'), ["d.jsonl", "line 2 (example 1", "not JSON"]),
    ("data-json-not-json (issue)", train_with("d.json", '[{"q": "q", "a": "a"},\n {"q": "q" "a": "a"}]'), ["d.json", "not JSON", "line 2 column 12"]),
    ("data-parquet-not-parquet (issue)", train_with("d.parquet", _jsonl(GOOD_ROWS)), ["d.parquet", "not a Parquet file"]),
    ("data-dict-in-prompt (issue)", train_with("d.jsonl", _jsonl([GOOD_ROWS[0], {"q": {"a": 1}, "a": "a"}])), ["dataset.prompt_field", "example 1", "dict in 'q'"]),
    ("data-list-in-response (issue)", train_with("d.jsonl", _jsonl([{"q": "q", "a": ["a"]}])), ["dataset.response_field", "example 0", "list in 'a'"]),
    ("data-missing-split (issue)", train_with("d.jsonl", dataset={"path": "{dir}", "split": "validation"}), ["dataset.split", "'validation'"]),
    ("data-empty-file (issue)", train_with("d.jsonl", ""), ["d.jsonl", "has no examples"]),
    ("data-no-assistant-turn (issue)", train_with("d.jsonl", _jsonl([{"m": [{"role": "user", "content": "q"}]}]), dataset={"messages_field": "m", "chat_template": CHAT}), ["dataset.messages_field", "example 0", "no assistant message"]),
    ("data-template-fails (issue)", train_with("d.jsonl", _jsonl([{"m": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]), dataset={"messages_field": "m", "chat_template": BROKEN_TEMPLATE}), ["example 0", "chat template failed to render", "no_such_filter"]),
    ("data-all-prompt-after-truncation (issue)", train_with("d.jsonl", _jsonl([GOOD_ROWS[1], {"q": "q q q q q", "a": "a"}]), dataset={"max_length": 3}), ["dataset.max_length", "example 1", "all prompt after truncation"]),
    ("data-blank-file", train_with("d.jsonl", "\n  \n"), ["d.jsonl", "has no examples"]),
    ("data-jsonl-not-object", train_with("d.jsonl", '["q", "a"]\n'), ["line 1 (example 0", "not an object"]),
    ("data-json-scalar", train_with("d.json", "42"), ["d.json", "JSON number"]),
    ("data-json-list-of-strings", train_with("d.json", '["q", "a"]'), ["d.json", "example 0 is a JSON string"]),
    ("data-json-empty-list", train_with("d.json", "[]"), ["has no examples"]),
    ("data-csv-ragged", train_with("d.csv", "q,a\nq,a\nq,a,a,a\n"), ["d.csv", "could not be read"]),
    ("data-missing-field", train_with("d.jsonl", _jsonl([{"question": "q", "a": "a"}])), ["dataset.prompt_field", "example 0", "no field 'q'"]),
    ("data-null-response", train_with("d.jsonl", _jsonl([GOOD_ROWS[0], {"q": "q", "a": None}])), ["dataset.response_field", "example 1", "no value"]),
    ("data-empty-response", train_with("d.jsonl", _jsonl([{"q": "q", "a": "  "}])), ["dataset.response_field", "example 0", "empty 'a'"]),
    ("data-message-content-list", train_with("d.jsonl", _jsonl([{"m": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]}]), dataset={"messages_field": "m", "chat_template": CHAT}), ["dataset.messages_field", "message 0 has a list"]),
    ("data-chat-without-template", train_with("d.jsonl", dataset={"template": "chat"}), ["dataset.template", "no chat template"]),
    ("data-file-missing", train_cfg(_set("dataset.path", "no/such.jsonl")), ["dataset.path", "file not found"]),
    ("sweep-run-data-not-utf8", sweep_data("d.jsonl", b'{"q": "\xff", "a": "a"}\n'), ["bad.yaml", "(variant 'otr')", "not UTF-8", "byte offset 7"]),
    ("sweep-run-data-dict", sweep_data("d.jsonl", _jsonl([{"q": {"a": 1}, "a": "a"}])), ["(variant 'otr')", "dataset.prompt_field", "example 0"]),
    # ---- training values (the five through the three commands; more through one)
    ("train-lr-negative (issue)", sweep("plan", _set("base.training.learning_rate", -1e-3)), ["field 'base.training.learning_rate'", "must be > 0"]),
    ("train-lr-zero (issue)", train_cfg(_set("training.learning_rate", 0)), ["field 'training.learning_rate'", "must be > 0"]),
    ("train-batch-zero (issue)", sweep("run", _set("variants.otr.training", {"per_device_train_batch_size": 0})), ["field 'variants.otr.training.per_device_train_batch_size'", ">= 1"]),
    ("train-max-steps-negative (issue)", sweep("plan", _set("base.training.max_steps", -5)), ["field 'base.training.max_steps'", "-1 to train num_train_epochs"]),
    ("train-warmup-fraction (issue)", train_cfg(_set("training.warmup_steps", 2.5)), ["field 'training.warmup_steps'", "whole number"]),
    ("train-grad-accum-zero", sweep("plan", _set("base.training.gradient_accumulation_steps", 0)), ["gradient_accumulation_steps", ">= 1"]),
    ("train-epochs-zero", train_cfg(_set("training", {"max_steps": -1, "num_train_epochs": 0})), ["training.num_train_epochs", "must be > 0"]),
    ("train-beta2-one", sweep("plan", _set("base.training.adam_beta2", 1.0)), ["adam_beta2", "[0, 1)"]),
    ("train-weight-decay-negative", train_cfg(_set("training.weight_decay", -0.1)), ["training.weight_decay", ">= 0"]),
    ("train-fp16-and-bf16", train_cfg(_set("training", {"max_steps": 1, "fp16": True, "bf16": True})), ["training.bf16", "both true"]),
    ("train-logging-steps-zero", sweep("plan", _set("base.training.logging_steps", 0)), ["logging_steps", "must be > 0"]),
    ("train-optimizer-missing-package", train_cfg(_set("training.optim", "adamw_bnb_8bit")), ["training.optim", "bitsandbytes"]),
    ("train-optim-args-malformed", sweep("run", _set("base.training.optim_args", "nonsense")), ["(variant 'otr')", "training.optim", "nonsense"]),
    ("train-lr-as-string", sweep("plan", _set("base.training.learning_rate", "1e-3")), ["field 'base.training.learning_rate'"]),
    # ---- sweep files
    ("sweep-not-yaml", sweep("plan", text="name: [demo\n"), ["bad.yaml", "not valid YAML"]),
    ("sweep-not-a-mapping", sweep("run", text="- name: demo\n"), ["bad.yaml", "expected a mapping"]),
    ("sweep-unknown-key", sweep("plan", _set("bogus", 1)), ["field 'bogus'"]),
    ("sweep-seeds-wrong-type", sweep("run", _set("seeds", "zero")), ["field 'seeds'"]),
    ("sweep-empty-grid-axis", sweep("plan", _set("grid", {"objective.k": []})), ["field 'grid'"]),
    ("sweep-unknown-objective", sweep("plan", _set("variants.sft.objective.name", "sfft")), ["sfft"]),
    ("sweep-otr-k-zero", sweep("run", _set("variants.otr.objective.k", 0)), ["variants.otr", "k"]),
    ("sweep-duplicate-runs", sweep("plan", _set("seeds", [0, 0])), ["same config"]),
    ("sweep-bad-name", sweep("plan", _set("name", "my sweep")), ["field 'name'"]),
    ("sweep-lr-tuning-on-test-task", sweep("plan", _set("lr_tuning", {"learning_rates": [1e-3, 3e-3], "select": {"suite": "toy", "task": "toy_math_id"}})), ["lr_tuning.select.task", "test task"]),
    # ---- run configs (otr-harness train)
    ("run-missing-model", train_cfg(_drop("model")), ["run.yaml", "field 'model'"]),
    ("run-unknown-training-field", train_cfg(_set("training.learning_rat", 1e-3)), ["run.yaml", "learning_rat"]),
    ("run-reserved-training-field", train_cfg(_set("training.output_dir", "x")), ["run.yaml", "output_dir"]),
    ("run-no-objective", train_cfg(_set("objective", None)), ["run.yaml", "field 'objective'"]),
    ("run-packing-with-sequences", train_cfg(lambda d: d.update(loss_normalization="sequences") or d["dataset"].update(packing=True)), ["run.yaml", "packing"]),
    ("run-lora-no-targets", train_cfg(_set("lora", {"target_modules": []})), ["run.yaml", "lora.target_modules"]),
    ("run-launcher-config-missing", train_cfg(_set("launcher", {"accelerate_config": "no/such.yaml"})), ["run.yaml", "launcher.accelerate_config"]),
    ("run-unknown-toy-ref", train_cfg(_set("dataset.path", "toy:math/nope")), ["run.yaml", "toy:math/nope"]),
    ("run-model-without-tokenizer", train_cfg(_set("model", "{src}")), ["run.yaml", "model: cannot load a tokenizer"]),
    # ---- suites
    ("suite-unknown-name", sweep("plan", _set("base.eval", {"suites": ["no_such_suite"]})), ["eval.suites'", "unknown suite 'no_such_suite'"]),
    ("suite-task-twice", suite({"name": "s", "tasks": [ENTRY, ENTRY]}), ["mysuite.yaml", "listed twice"]),
    ("suite-bad-split", suite({"name": "s", "tasks": [{**ENTRY, "split": "test"}]}, "plan"), ["eval.suites", "mysuite.yaml", "tasks.0.split"]),
    ("suite-samples-without-sampling", suite({"name": "s", "tasks": [{**ENTRY, "samples": 4, "temperature": 0}]}), ["mysuite.yaml", "needs sampling"]),
    ("suite-no-tasks", suite({"name": "s", "tasks": []}, "plan"), ["mysuite.yaml", "tasks"]),
    ("suite-not-a-mapping", suite("- toy_math_id\n"), ["mysuite.yaml", "expected a mapping"]),
    ("suite-unknown-key", suite({"name": "s", "tasks": [{**ENTRY, "temprature": 1.0}]}), ["mysuite.yaml", "temprature"]),
    # ---- command-line flags
    ("flag-max-parallel-zero", lambda src, tok: [*sweep("run")(src, tok), "--max-parallel", "0"], ["--max-parallel", ">= 1"]),
    ("flag-no-wait-local", lambda src, tok: [*sweep("run")(src, tok), "--no-wait"], ["--no-wait"]),
    ("flag-unknown-executor", lambda src, tok: [*sweep("run")(src, tok), "--executor", "cloud"], ["--executor", "cloud"]),
    ("flag-eval-limit-zero", argv("eval", "{tok}", "--limit", "0"), ["--limit", ">= 1"]),
    ("flag-eval-batch-size-negative", argv("eval", "{tok}", "--batch-size", "-4"), ["--batch-size"]),
    ("flag-eval-missing-model-dir", argv("eval", "./no/such/model", "--suite", "toy"), ["./no/such/model", "no such model directory"]),
    ("flag-report-not-a-sweep-dir", argv("report", "{src}"), ["not a sweep directory"]),
    ("flag-status-not-a-sweep-dir", argv("sweep", "status", "{src}"), ["not a sweep directory"]),
    ("flag-unknown-command", argv("sweep", "launch", "x.yaml"), ["invalid choice: 'launch'"]),
]  # fmt: skip


def test_the_corpus_is_large_and_covers_every_kind():
    kinds = {case_id.split("-")[0] for case_id, _, _ in CASES}
    assert len(CASES) >= 40 and {"data", "train", "sweep", "run", "suite", "flag"} <= kinds
    assert sum("(issue)" in case_id for case_id, _, _ in CASES) == 11 + 5  # every issue case is here


@pytest.mark.parametrize(("make", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    tmp_path, monkeypatch, capsys, tok_dir, make, needles
):
    import harness.training.recipe as recipe

    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    work.mkdir()
    (src / DIR_DATA).mkdir()  # a directory dataset with a train split only (missing-split case)
    (src / DIR_DATA / "train.jsonl").write_text(_jsonl(GOOD_ROWS))
    args = [a.replace("{dir}", str(src / DIR_DATA)) for a in make(src, tok_dir)]
    for f in src.glob("*.yaml"):  # the {dir} placeholder inside written configs
        f.write_text(
            f.read_text().replace("'{dir}'", str(src / DIR_DATA)).replace("{dir}", str(src / DIR_DATA))
        )
    monkeypatch.chdir(work)
    monkeypatch.setattr(recipe, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, f"{args}: exit {code}\n{err}"
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert list(work.iterdir()) == []  # nothing written where the command ran (no runs/, reports/, run/)
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before  # nor beside the inputs


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 without use_cpu is valid on a GPU")
def test_precision_flag_the_device_lacks_is_refused_by_train_and_sweep_run(
    tmp_path, monkeypatch, capsys, tok_dir
):
    """Device-dependent: bf16 needs a GPU (or use_cpu). `sweep plan` cannot know where runs will execute,
    so it plans; `train` and `sweep run` (local executor) refuse before anything runs."""
    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    bf16 = _set("base.training.bf16", True)
    assert main(sweep("plan", bf16)(src, tok_dir)) == 0
    capsys.readouterr()
    for args in (sweep("run", bf16)(src, tok_dir), train_cfg(_set("training.bf16", True))(src, tok_dir)):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "training: " in err and "bf16" in err, err
    assert list(work.iterdir()) == []
