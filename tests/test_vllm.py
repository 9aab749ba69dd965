"""The vllm backend for real: vLLM's CPU build (the separate .venv-vllm made by `make vllm`) evaluates the
toy tasks through lm-eval, launched the way a sweep launches it, and agrees with the hf backend.

Time on 2 idle cores: ~1.5 min (a vLLM-compatible tiny toy world ~20 s the first time, engine start ~40 s,
the hf evaluation ~15 s). `.ci/run` builds the venv and sets OTR_HARNESS_REQUIRE_VLLM=1, so CI runs this (and
fails if the venv is missing); locally it is skipped without the venv.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from harness import toy
from harness.config import EvalConfig, RunConfig
from harness.config.suites import load_suite
from harness.eval import backends
from harness.eval.runner import evaluate
from harness.execution.launch import eval_command
from harness.runs.io import read_jsonl
from harness.runs.layout import RunDir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        backends.vllm_python() is None and not os.environ.get("OTR_HARNESS_REQUIRE_VLLM"),
        reason="no vLLM interpreter: run `make vllm` (creates .venv-vllm) or set OTR_HARNESS_VLLM_PYTHON",
    ),
]

TASKS = [
    {"task": "toy_math_id", "domain": "math", "metric": "exact_match"},  # greedy generation, 256 tokens
    {"task": "toy_reasoning_logic_id", "domain": "reasoning", "metric": "exact_match"},  # greedy generation
    {"task": "toy_reasoning_mc_id", "domain": "reasoning", "metric": "acc"},  # log-likelihoods
]
LIMIT = 16


@pytest.fixture(scope="module")
def vllm_toy() -> tuple[toy.ToyConfig, toy.ToyWorld]:
    """The tiny world with 2 attention heads: head size 32, as vLLM's CPU attention needs (>= 32; the
    tiny preset's 4 heads give 16, which the harness refuses on CPU with a clear message)."""
    base = toy.ToyConfig.preset("tiny")
    cfg = base.model_copy(update={"model": base.model.model_copy(update={"num_heads": 2})})
    return cfg, toy.build(cfg, progress=False)


def test_vllm_and_hf_agree_on_the_toy_tasks(tmp_path, vllm_toy, monkeypatch):
    assert backends.vllm_python() is not None, "OTR_HARNESS_REQUIRE_VLLM is set but there is no .venv-vllm"
    monkeypatch.setenv("OTR_HARNESS_EVAL_CACHE", str(tmp_path / "eval-cache"))
    cfg, world = vllm_toy
    suite_file = tmp_path / "cmp.yaml"
    suite_file.write_text(
        yaml.safe_dump({"name": "cmp", "include_path": "@toy", "builtin_tasks": False, "tasks": TASKS})
    )

    # vllm, launched as a sweep launches the evaluation stage of a base-model run.
    run_cfg = RunConfig.model_validate(
        {
            "model": "toy:base",
            "toy": cfg.model_dump(mode="json"),
            "eval": {"suites": [str(suite_file)], "backend": "vllm", "limit": LIMIT, "batch_size": 16},
        }
    )
    run = RunDir(tmp_path / "run")
    run.write_config(run_cfg)
    cmd = eval_command(run.path, run_cfg)
    assert cmd[0] == backends.vllm_python() and cmd[-2:] == ["--backend", "vllm"]
    log = tmp_path / "eval.log"
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
    assert proc.returncode == 0 and run.is_done("eval"), log.read_text()[-3000:]
    vllm_res = json.loads((run.eval_dir("cmp") / "results.json").read_text())
    assert vllm_res["settings"]["backend"] == "vllm" and vllm_res["settings"]["versions"]["vllm"]

    # hf, in this process.
    hf_res = evaluate(
        str(world.base_model),
        load_suite(str(suite_file)),
        tmp_path / "hf",
        EvalConfig(backend="hf", limit=LIMIT, batch_size=16, cache=False),
        cfg,
    )

    for entry in TASKS:
        task = entry["task"]
        h, v = hf_res["tasks"][task], vllm_res["tasks"][task]
        assert h["n"] == v["n"] == LIMIT
        assert h["value"] == v["value"], task  # exact match / accuracy agree
        hs = read_jsonl(tmp_path / "hf" / f"samples_{task}.jsonl")
        vs = read_jsonl(run.eval_dir("cmp") / f"samples_{task}.jsonl")
        assert [s["doc_id"] for s in hs] == [s["doc_id"] for s in vs]
        for a, b in zip(hs, vs, strict=True):
            if entry["metric"] == "exact_match":  # greedy generations: identical text
                assert a["resps"] == b["resps"], (task, a["doc_id"])
                assert a["filtered_resps"] == b["filtered_resps"]
            else:  # log-likelihoods: equal up to float32 kernel differences, same argmax
                for (la, ga), (lb, gb) in zip(
                    (r[0] for r in a["resps"]), (r[0] for r in b["resps"]), strict=True
                ):
                    assert la == pytest.approx(lb, abs=1e-3) and ga == gb
                assert a["acc"] == b["acc"]
    # Non-trivial generations were compared (the untrained model still writes tokens).
    gens = [s["resps"][0][0] for s in read_jsonl(tmp_path / "hf" / "samples_toy_math_id.jsonl")]
    assert sum(len(g) for g in gens) > 100
