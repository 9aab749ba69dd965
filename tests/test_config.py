"""Config validation and sweep expansion: bad input fails early with one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.config import ConfigError, RunSpec, expand_sweep, load_sweep_config, parse_run_config
from harness.paths import repo_root

DEMO = repo_root() / "sweeps" / "demo.yaml"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def test_demo_sweep_expands_to_base_plus_methods_times_seeds():
    sweep = load_sweep_config(DEMO)
    specs = expand_sweep(sweep)
    assert [s.variant for s in specs] == ["base", "sft", "sft", "otr", "otr"]
    assert [s.config.seed for s in specs[1:]] == [0, 1, 0, 1]
    assert specs[0].config.objective is None and not specs[0].config.is_training
    otr = specs[3].config.objective
    assert otr.name == "otr" and otr.params == {"k": 16, "tau": 1.2, "beta": -0.1}
    assert len({s.run_id for s in specs}) == 5
    # The run id is a pure function of the resolved config: planning twice gives the same ids.
    assert [s.run_id for s in specs] == [s.run_id for s in expand_sweep(load_sweep_config(DEMO))]


def test_run_id_changes_with_any_knob():
    base = expand_sweep(load_sweep_config(DEMO))[3]
    cfg = base.config.model_copy(update={"seed": 7})
    assert RunSpec(cfg, "otr").run_id != base.run_id


@pytest.mark.parametrize(
    ("config", "digest"),
    [
        ({"model": "toy:base"}, "f45e827da0"),
        ({"model": "toy:base", "eval": {"backend": "hf"}}, "f45e827da0"),  # "auto" hashes as the old "hf"
        (
            {
                "model": "toy:base",
                "dataset": {"path": "toy:math/train", "prompt_field": "question", "response_field": "answer"},
                "objective": {"name": "otr", "k": 4},
                "training": {"learning_rate": 1e-3, "max_steps": 10},
                "seed": 1,
            },
            "76c7930414",
        ),
        (
            {
                "model": "some/hub-model",
                "eval": {"suites": ["math"], "backend": "vllm", "tensor_parallel_size": 2},
            },
            "a1e2c4ebdc",
        ),
    ],
)
def test_config_hash_is_stable(config, digest):
    """Run ids end in config_hash()[:8]: a change here renames every existing run directory. A new
    RunConfig field with a default belongs in harness/config/hashing.py's _HASH_OMIT_AT_DEFAULT."""
    assert parse_run_config(config).config_hash() == digest


def test_objective_override_replaces_whole_block(tmp_path):
    data = _demo()
    data["base"]["objective"] = {"name": "otr", "k": 4}
    data["variants"] = {"sft": {"objective": {"name": "sft"}}}
    specs = expand_sweep(load_sweep_config(_write(tmp_path, data)))
    assert specs[1].config.objective.params == {}  # otr's k must not leak into sft


def test_grid_axes_are_cartesian(tmp_path):
    data = _demo()
    data["variants"] = {"otr": {"objective": {"name": "otr", "k": 4}}}
    data["grid"] = {"objective.k": [1, 4], "training.learning_rate": [1e-3, 1e-4]}
    data["seeds"] = [0]
    specs = expand_sweep(load_sweep_config(_write(tmp_path, data)))
    combos = {(s.config.objective.params["k"], s.config.training["learning_rate"]) for s in specs[1:]}
    assert combos == {(1, 1e-3), (1, 1e-4), (4, 1e-3), (4, 1e-4)}


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(bogus=1), "'bogus'"),
        (lambda d: d.update(seeds="zero"), "'seeds'"),
        (lambda d: d["variants"]["otr"]["objective"].update(k=0), "k"),
        (lambda d: d["variants"]["otr"]["objective"].update(tau=0), "tau"),
        (lambda d: d["variants"]["otr"]["objective"].update(name="ot"), "unknown objective"),
        (lambda d: d.update(grid={"objective.k": []}), "objective.k"),
        (lambda d: d["base"]["training"].update(learning_rat=1e-3), "learning_rat"),
        (lambda d: d["base"]["training"].update(output_dir="x"), "output_dir"),
        (lambda d: d["base"].pop("dataset"), "dataset"),
        (lambda d: d["base"]["dataset"].update(prompt_format="Q:"), "prompt_format"),
        (lambda d: d["base"]["eval"].update(limit=0), "field 'base.eval.limit'"),
        (lambda d: d["variants"]["otr"].update(eval={"batch_size": 0}), "'variants.otr.eval.batch_size'"),
        (lambda d: d["base"]["dataset"].update(max_length=0), ".dataset.max_length'"),
        (lambda d: d["base"]["dataset"].update(path="no/such/file.jsonl"), "file not found"),
        (lambda d: d["base"]["dataset"].update(path="toy:math/validation"), "unknown toy reference"),
        (lambda d: d["base"].update(model="toy:large"), "toy:base"),
    ],
)
def test_bad_sweep_files_fail_with_one_line_naming_the_field(tmp_path, mutate, needle):
    data = _demo()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        expand_sweep(load_sweep_config(path), str(path))
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert str(path) in msg and needle in msg, msg


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_sweep_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_sweep_config(bad)


def test_cli_rejects_bad_sweep_with_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    data = _demo()
    data["variants"]["otr"]["objective"]["k"] = 0
    path = _write(tmp_path, data)
    assert main(["sweep", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "k" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]  # no runs/, no reports/


def test_demo_trains_on_the_prompt_the_toy_tasks_evaluate():
    from harness import toy
    from harness.config import DatasetConfig

    demo = DatasetConfig.model_validate(_demo()["base"]["dataset"])
    assert demo == DatasetConfig.model_validate(toy.dataset_config(max_length=demo.max_length))


def test_toy_names_are_one_object_in_config_and_toy():
    """The toy world's config lives in the config room; harness.toy re-exports it (one class, not a copy)."""
    from harness import toy
    from harness.config import toy as toy_config

    for name in (
        "ToyConfig",
        "DOMAINS",
        "SPLITS",
        "PREFIX",
        "PROMPT",
        "GENERATOR_VERSION",
        "valid_refs",
        "world_hash",
    ):
        assert getattr(toy, name) is getattr(toy_config, name), name
    assert toy.valid_refs(toy.ToyConfig())[:3] == ["toy:base", "toy:tasks", "toy:math/train"]
    assert toy.is_toy_ref("toy:base") and not toy.is_toy_ref("org/model")
