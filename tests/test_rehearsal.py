"""The paper dress rehearsal: every ``sweeps/paper/`` file runs plan -> train -> evaluate -> report offline on
stand-ins (``tests/rehearsal/``) that differ from the real models and data only in size and content, with
lm-eval's own task definitions of the ``paper`` suite; plus the ``--set`` override mechanism it uses.

Fast tier: ``--set`` parsing and its one-line errors (exit 2, nothing written), the effective sweep file a
sweep directory keeps, ``eval.dataset_overrides`` validation and group resolution, the stand-in
tokenizers' save/reload, the hf backend's reset of checkpoint decoding defaults.
Slow tier: the paper tasks on stand-in documents through lm-eval's task configs (the same with lm-eval's
task index built afresh and served from the harness's cache), one end-to-end test per paper sweep file (the
``*_openr1`` ones train through the chat template on the dataset's messages), all eight in every
``make test``, and the paper suite on the vllm backend (vLLM's CPU build, ``make vllm``).

Time on 2 quiet cores (2026-12-01): ~70 s per sweep file (9 stage processes, 2 at a time, one thread each:
~9 s per training, ~16 s per evaluation, of which ~1 s for lm-eval's task index, served from the cache),
65-95 s for the vllm test (its engine start ~40-55 s), ~25 s to build the stand-ins.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import ConfigError, EvalConfig
from harness.config.io import effective_sweep_text
from harness.config.suites import load_suite
from harness.execution.plan import plan
from harness.paths import repo_root

PAPER = sorted((repo_root() / "sweeps" / "paper").glob("*.yaml"))
SWEEP = PAPER[0]


# ------------------------------------------------------------------------------------------- --set


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("base.eval.limt=4", "unknown key 'limt' in 'base.eval'"),
        ("base.training.max_step=2", "unknown key 'max_step' in 'base.training'"),
        ("bogus=1", "unknown key 'bogus' in 'the top level'"),
        ("base.eval.limit=four", "--set base.eval.limit=four: input should be a valid integer"),
        ("base.training.max_steps=[2]", "--set base.training.max_steps=[2]: 'base.training.max_steps'"),
        ("base.dataset.max_length=2.5", "--set base.dataset.max_length=2.5:"),
        ("seeds.0=1", "'seeds' is a list: set it whole"),
        ("base.model.name=x", "'base.model' is a str, which has no key 'name'"),
        (
            "base.eval.dataset_overrides.gsm8k_cot.path=x",
            "unknown key 'path' in 'base.eval.dataset_overrides",
        ),
        ("novalue", "expected KEY=VALUE"),
    ],
)
@pytest.mark.parametrize("command", ["plan", "run"])
def test_bad_override_fails_before_anything_runs(tmp_path, capsys, command, override, named):
    out = tmp_path / "sweep"
    code = main(["sweep", command, str(SWEEP), "--out", str(out), "--set", override])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and named in err, err
    assert not out.exists()  # nothing written


def test_bad_override_of_train_fails_before_anything_runs(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: some/model\ndataset: {path: some/data}\nobjective: {name: sft}\n")
    code = main(["train", str(cfg), "--out", str(tmp_path / "one"), "--set", "training.lerning_rate=1e-4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [err] and "'lerning_rate'" in err
    assert not (tmp_path / "one").exists()


def test_override_values_are_yaml_and_change_the_runs():
    plain = plan(SWEEP)
    pl = plan(
        SWEEP, overrides=["base.training.max_steps=2", "base.training.learning_rate=1e-4", "seeds=[0, 1]"]
    )
    cfg = pl.runs[1].spec.config
    assert (
        cfg.training["max_steps"] == 2 and cfg.training["learning_rate"] == 1e-4
    )  # 1e-4: a number, not text
    assert len(pl.runs) == 2 * (len(plain.runs) - 1) + 1
    assert {r.spec.run_id for r in pl.runs[1:]}.isdisjoint(r.spec.run_id for r in plain.runs)
    # The base run is untouched by training overrides: same id (its evaluation can be shared).
    assert pl.runs[0].spec.run_id == plain.runs[0].spec.run_id


def test_grid_axis_and_variant_overrides():
    pl = plan(SWEEP, overrides=["grid.training.learning_rate=[1e-5, 5e-5]", "variants.otr.objective.tau=1.0"])
    otr = [r.spec for r in pl.runs if r.spec.config.objective and r.spec.config.objective.name == "otr"]
    assert sorted(s.config.training["learning_rate"] for s in otr) == [1e-5, 5e-5]
    assert {s.config.objective.params["tau"] for s in otr} == {1.0}
    assert {s.config.objective.params["k"] for s in otr} == {256}  # the file's other values stay


def test_sweep_dir_keeps_the_overridden_file(tmp_path):
    """`sweep status` / `report` re-plan a sweep directory from the file it keeps: with --set that must be
    the file as overridden, or they would find other run ids than the ones that ran."""
    overrides = ["base.training.max_steps=3", "base.eval.limit=2"]
    kept = tmp_path / "sweep.yaml"
    kept.write_text(effective_sweep_text(SWEEP, overrides))
    assert "--set base.training.max_steps=3" in kept.read_text()
    ids = [r.spec.run_id for r in plan(SWEEP, overrides=overrides).runs]
    assert [r.spec.run_id for r in plan(kept).runs] == ids


def test_value_errors_after_overrides_name_the_file_and_field(tmp_path):
    with pytest.raises(ConfigError, match=r"\(with --set\): field '.*dataset.path': file not found"):
        plan(SWEEP, overrides=[f"base.dataset.path={tmp_path / 'missing.jsonl'}"])


# -------------------------------------------------------------------------------- dataset_overrides


def _location(path: Path | None) -> str:
    kwargs = f', "dataset_kwargs": {{"data_files": {{"test": "{path}"}}}}' if path else ""
    return f'base.eval.dataset_overrides={{"gsm8k_cot": {{"dataset_path": "json"{kwargs}}}}}'


def test_dataset_overrides_are_validated_at_plan_time(tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    with pytest.raises(
        ConfigError,
        match=r"^--set base.eval.dataset_overrides=.*: data file not found: .*gsm8k.jsonl \(relative",
    ):
        plan(SWEEP, overrides=[_location(data)])
    with pytest.raises(ConfigError, match="give dataset_kwargs.data_files"):
        plan(SWEEP, overrides=[_location(None)])
    data.write_text('{"question": "q", "answer": "#### 1"}\n')
    cfg = plan(SWEEP, overrides=[_location(data)]).runs[0].spec.config
    assert cfg.eval.dataset_overrides["gsm8k_cot"].dataset_path == "json"


def _index() -> dict:
    """A fake lm-eval task index: a group of two tasks, a nested group, and a lone task."""
    from lm_eval.tasks._index import Entry, Kind

    return {
        "grp": Entry("grp", Kind.GROUP, None, cfg={"group": "grp", "task": ["t1", {"task": "t2"}, "sub"]}),
        "sub": Entry("sub", Kind.GROUP, None, cfg={"group": "sub", "task": ["t3"]}),
        "t1": Entry("t1", Kind.TASK, None),
        "t2": Entry("t2", Kind.TASK, None),
        "t3": Entry("t3", Kind.TASK, None),
        "lone": Entry("lone", Kind.TASK, None),
    }


def test_group_override_covers_its_tasks_and_a_task_key_wins():
    from harness.config.task_data import TaskDataLocation
    from harness.eval import task_data

    a, b = TaskDataLocation(dataset_path="hub/a"), TaskDataLocation(dataset_path="hub/b")
    out = task_data.resolve(_index(), {"grp": a, "t3": b}, ["grp", "lone"])
    assert out == {"t1": a, "t2": a, "t3": b}
    with pytest.raises(ConfigError, match="'lone2' is not a task or group of the evaluated suites"):
        task_data.resolve(_index(), {"lone2": a}, ["grp", "lone"])
    with pytest.raises(ConfigError, match="'lone'"):  # in the index, but no suite entry runs it
        task_data.resolve(_index(), {"lone": a}, ["grp"])


# --------------------------------------------------------------------------------------- stand-ins


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    from rehearsal import rehearse

    root = tmp_path_factory.mktemp("stand_ins")
    return root, rehearse.stand_ins(root)


def test_stand_in_tokenizers_survive_save_and_reload(stand_ins):
    """Built and checked by models.check_roundtrip (ids, chat rendering, special tokens); here: the
    family traits the sweeps depend on."""
    from transformers import AutoConfig, AutoTokenizer

    _, built = stand_ins
    seen = {}
    for real, path in built["models"].items():
        tok, cfg = AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path)
        seen[real] = (type(tok).__name__, cfg.model_type, tok.eos_token, tok.pad_token, tok.bos_token)
        assert cfg.vocab_size >= len(tok)
        chat = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
        assert chat.endswith("<|im_start|>assistant\n" if "Qwen" in real else "<|end_header_id|>\n\n")
    assert seen["Qwen/Qwen2.5-Math-1.5B"] == (
        "Qwen2Tokenizer",
        "qwen2",
        "<|endoftext|>",
        "<|endoftext|>",
        None,
    )
    assert seen["Qwen/Qwen3-4B-Base"][:2] == ("Qwen2Tokenizer", "qwen3")
    assert seen["meta-llama/Llama-3.2-3B"][1:] == ("llama", "<|end_of_text|>", None, "<|begin_of_text|>")


def test_hf_backend_resets_checkpoint_decoding_defaults(stand_ins):
    """Qwen's generation_config max_new_tokens 2048 outranks lm-eval's max_length under hf generate(), and
    Llama 3.2's top_p 0.9 would narrow temperature-1 sampling: both are reset after loading."""
    from transformers import AutoModelForCausalLM

    from harness.eval.backends import neutral_generation_defaults

    _, built = stand_ins
    qwen = AutoModelForCausalLM.from_pretrained(built["models"]["Qwen/Qwen2.5-7B"])
    llama = AutoModelForCausalLM.from_pretrained(built["models"]["meta-llama/Llama-3.2-3B"])
    assert qwen.generation_config.max_new_tokens == 2048 and llama.generation_config.top_p == 0.9
    for model in (qwen, llama):
        neutral_generation_defaults(model)
    assert qwen.generation_config.max_new_tokens is None
    assert llama.generation_config.top_p is None and not llama.generation_config.do_sample
    assert llama.generation_config.eos_token_id is not None  # what ends a generation is kept


def _prompts(entries) -> dict[str, list]:
    """Every request each entry's tasks build for their first document (few-shot context included)."""
    import random

    from lm_eval.defaults import DEFAULT_RANDOM_SEED

    out = {}
    for e in entries:
        for name, task in sorted(e.task_manager.load([e.spec.task])["tasks"].items()):
            random.seed(DEFAULT_RANDOM_SEED)  # gpqa shuffles its choices with `random` as it reads its docs
            task.build_all_requests(limit=1)
            out[name] = [inst.args for inst in task.instances]
    return out


@pytest.mark.slow
def test_paper_tasks_read_stand_in_documents_through_their_own_configs(stand_ins, monkeypatch):
    """Every entry of the paper suite builds through lm-eval's own task config with only the data location
    replaced: documents load, prompts render, and the key (task hash) is the same in every load — and the
    same, down to every prompt, whether lm-eval's task index was built afresh or served from the cache
    (``harness.eval.task_index``: the rehearsal's evaluations, like every evaluation, use the cache)."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import TaskIndex
    from rehearsal import rehearse

    from harness.config.task_data import TaskDataLocation
    from harness.eval import task_index
    from harness.eval.entries import check_tasks, load_for_run, resolve_entries

    _, built = stand_ins
    locations = rehearse.task_locations(built["tasks"])
    cfg = EvalConfig(
        suites=["paper"], dataset_overrides={k: TaskDataLocation(**v) for k, v in locations.items()}
    )
    unsafe_ok = cfg.model_copy(update={"allow_unsafe_code": True})
    (entries,) = resolve_entries([load_suite("paper")], None, cfg)  # through the cache (stored if new)
    check_tasks(entries, unsafe_ok, with_hashes=True)
    first = {e.spec.task: dict(e.task_hashes) for e in entries}
    check_tasks(entries, unsafe_ok, with_hashes=True)
    assert {e.spec.task: e.task_hashes for e in entries} == first  # gpqa shuffles its choices: seeded

    with monkeypatch.context() as m:  # lm-eval's own TaskManager: the index built afresh
        m.setattr(
            task_index,
            "task_manager",
            lambda include, defaults=True: TaskManager(include_path=include, include_defaults=defaults),
        )
        (fresh,) = resolve_entries([load_suite("paper")], None, cfg)
    with monkeypatch.context() as m:  # served: lm-eval must not build it again
        m.setattr(TaskIndex, "build", staticmethod(lambda *a, **k: pytest.fail("index rebuilt, not served")))
        (served,) = resolve_entries([load_suite("paper")], None, cfg)
    assert served[0].task_manager.task_index == fresh[0].task_manager.task_index
    assert list(served[0].task_manager.task_index) == list(fresh[0].task_manager.task_index)
    for some in (fresh, served):
        check_tasks(some, unsafe_ok, with_hashes=True)
        assert {e.spec.task: e.task_hashes for e in some} == first
    assert _prompts(served) == _prompts(fresh)

    for e in entries:
        tasks = load_for_run(e, 0, "hf")
        leaves = [t for t in e.task_manager.load([e.spec.task])["tasks"].values()]
        assert e.leaves and leaves, e.spec.task
        for task in leaves:
            assert task.get_config("dataset_path") == "json", (e.spec.task, task.get_config("dataset_path"))
            docs = list(task.eval_docs)
            assert docs and task.doc_to_text(docs[0]), task.get_config("task")
        assert tasks


@pytest.mark.slow
def test_paper_metrics_score_a_right_answer_one_and_a_wrong_one_zero(stand_ins):
    """Never a silent zero: for every task of every paper entry, a right answer written in the task's own
    format scores 1 through the task's own filter and primary metric, and a wrong one 0. (The stand-in
    models score 0 everywhere; this shows that 0 means wrong, not unscorable.)"""
    from rehearsal import oracle, rehearse

    from harness.config.task_data import TaskDataLocation
    from harness.eval.entries import resolve_entries

    _, built = stand_ins
    locations = rehearse.task_locations(built["tasks"])
    cfg = EvalConfig(
        suites=["paper"], dataset_overrides={k: TaskDataLocation(**v) for k, v in locations.items()}
    )
    (entries,) = resolve_entries([load_suite("paper")], None, cfg)
    for e in entries:
        for name, task in sorted(e.task_manager.load([e.spec.task])["tasks"].items()):
            doc = list(task.eval_docs)[0]
            right, wrong = oracle.score(task, doc), oracle.score(task, doc, response="I do not know.")
            primary = e.spec.filter or next(iter(right))
            assert right[primary][e.spec.metric] == 1, (name, right)
            assert wrong[primary][e.spec.metric] == 0, (name, wrong)


# -------------------------------------------------------------------------------------- the rehearsal


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory):
    """One evaluation cache for the session: the two sweeps of a model share its base run's evaluation
    (the second sweep's base evaluation is served from it: ~12 s, process start and task checks)."""
    return tmp_path_factory.mktemp("eval_cache")


@pytest.mark.slow
@pytest.mark.parametrize("sweep_file", PAPER, ids=[p.stem for p in PAPER])
def test_paper_sweep_rehearsal(sweep_file, stand_ins, eval_cache, tmp_path, monkeypatch):
    from rehearsal import rehearse

    monkeypatch.setenv("OTR_HARNESS_EVAL_CACHE", str(eval_cache))
    root, _ = stand_ins
    chat = "openr1" in sweep_file.stem  # the other data path: the chat template over `messages`
    code, runs, reports = rehearse.run(sweep_file, tmp_path, root, chat=chat)
    assert code == 0, [p.read_text()[-2000:] for p in runs.glob("*/logs/*.log")]

    methods = {"base", "sft", "dft", "otr", "otr_exact"}
    tasks = {t.task for t in load_suite("paper").tasks}
    with (reports / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    by_method = {}
    for row in rows:
        by_method.setdefault(row["method"].split("(")[0], set()).add(row["task"])
        assert row["value"] not in ("", "nan") and not math.isnan(float(row["value"])), row
    assert set(by_method) == methods, by_method
    for method, seen in by_method.items():
        assert seen == tasks, (method, tasks - seen)
    # Avg@k capped by eval.max_samples (2): two sampled runs per math entry, and no third.
    some_run = next(p for p in runs.iterdir() if p.name.startswith("sft-"))
    results = json.loads((some_run / "eval" / "paper" / "results.json").read_text())
    gsm8k = results["tasks"]["gsm8k_cot"]
    assert len(gsm8k["runs"]) == 2 and gsm8k["n"] == 1, gsm8k
    report = (reports / "report.md").read_text()
    if "Qwen2.5-Math-1.5B" in sweep_file.read_text():
        assert "Reference numbers" in report  # the DFT paper's Table 1, matched by the model's name


def test_rehearsal_swaps_only_model_data_and_sizes(tmp_path):
    """The rehearsal's overrides touch the model, the data locations and sizes (and use_cpu, needed for the
    file's bf16 on a CPU), nothing else — so what it runs is the shipped file."""
    from rehearsal import rehearse

    allowed = ("base.model=", "base.dataset.path=", "base.eval.dataset_overrides=", *rehearse.SIZES)
    fake = {
        "models": {m: "/m" for m in rehearse.FAMILY},
        "train": {"numina": "/d", "openr1": "/d"},
        "tasks": {},
    }
    (tmp_path / "stand_ins.json").write_text(json.dumps(fake))
    for sweep_file in PAPER:
        for o in rehearse.overrides(sweep_file, tmp_path):
            assert o.startswith(allowed), o


@pytest.mark.slow
def test_paper_suite_on_the_vllm_backend(stand_ins, tmp_path, monkeypatch):
    """The vllm backend on a stand-in vLLM's CPU build can run (head size 32): the base run of the
    Qwen2.5-Math sweep's rehearsal with ``eval.backend: vllm``, launched as a sweep launches its evaluation
    (the worker under the vLLM venv's python): every paper task scored, Avg@k's runs with vLLM's
    per-request seeds. Skipped without a vLLM interpreter (CI builds one: ``make vllm``)."""
    import subprocess

    from rehearsal import rehearse

    from harness.eval import backends
    from harness.execution.launch import eval_command
    from harness.runs.layout import RunDir

    if backends.vllm_python() is None:  # CI sets OTR_HARNESS_REQUIRE_VLLM: there it must run
        assert not os.environ.get("OTR_HARNESS_REQUIRE_VLLM"), "OTR_HARNESS_REQUIRE_VLLM but no .venv-vllm"
        pytest.skip("no vLLM interpreter: `make vllm` creates .venv-vllm (or set OTR_HARNESS_VLLM_PYTHON)")
    monkeypatch.setenv("OTR_HARNESS_EVAL_CACHE", str(tmp_path / "eval_cache"))
    root, _ = stand_ins
    sweep_file = next(p for p in PAPER if p.stem == "qwen2.5-math-1.5b_numina")
    overrides = [*rehearse.overrides(sweep_file, root), "base.eval.backend=vllm"]
    base = plan(sweep_file, overrides=overrides).runs[0].spec
    assert not base.config.is_training
    run = RunDir(tmp_path / "base")
    run.write_config(base.config)
    cmd = eval_command(run.path, base.config)
    assert cmd[0] == backends.vllm_python() and cmd[-2:] == ["--backend", "vllm"]
    log = tmp_path / "eval.log"
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
    assert proc.returncode == 0 and run.is_done("eval"), log.read_text()[-3000:]

    results = json.loads(run.results_file("paper").read_text())
    assert results["settings"]["backend"] == "vllm" and results["settings"]["versions"]["vllm"]
    assert set(results["tasks"]) == {t.task for t in load_suite("paper").tasks}
    for task, r in results["tasks"].items():
        assert r["value"] is not None and not math.isnan(float(r["value"])), (task, r)
    gsm8k = results["tasks"]["gsm8k_cot"]
    assert len(gsm8k["runs"]) == 2 and gsm8k["n"] == 1, gsm8k  # Avg@k capped by eval.max_samples
