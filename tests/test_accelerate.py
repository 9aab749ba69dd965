"""Multi-process training through `accelerate launch` (2 CPU processes, gloo) matches one process.

Same global batch (1 process × 8 vs 2 processes × 4), plain SGD: with the loss normalised by the response
tokens of all processes, every step's loss and the final weights agree to float tolerance; only rank 0
writes the run directory.
"""

from __future__ import annotations

import json
import socket
import sys

import pytest
import torch
import yaml
from test_train_formats import _training  # plain SGD, no schedule: updates comparable
from transformers import AutoModelForCausalLM

from harness import cli, toy
from harness.config import ConfigError, parse_run_config
from harness.execution.launch import stage_command
from harness.runs.layout import RunDir
from harness.training.recipe import train

# On a CPU-only machine: accelerate's MULTI_GPU launcher (torchrun) starts the processes, and
# `training.use_cpu: true` makes them join a gloo process group on the CPU. On GPUs drop use_cpu.
ACCELERATE_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(toy_cfg, per_device: int, launcher: dict | None = None) -> dict:
    d = {
        "model": "toy:base",
        "toy": toy_cfg.model_dump(mode="json"),
        "dataset": toy.dataset_config(max_examples=32),
        "objective": {"name": "sft"},
        "training": _training(per_device_train_batch_size=per_device, max_steps=3, use_cpu=True),
    }
    if launcher is not None:
        d["launcher"] = launcher
    return d


def test_train_command_uses_accelerate_launch(tmp_path, tiny_toy):
    cfg, _ = tiny_toy
    acc = tmp_path / "accelerate.yaml"
    acc.write_text(ACCELERATE_CONFIG)
    plain = parse_run_config(_cfg(cfg, 8))
    assert stage_command("train", "RUN", plain) == [
        sys.executable,
        "-m",
        "harness.execution.worker",
        "train",
        "RUN",
    ]
    launched = parse_run_config(
        _cfg(cfg, 4, {"accelerate_config": str(acc), "num_processes": 2, "main_process_port": 29511})
    )
    assert stage_command("train", "RUN", launched) == [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(acc.resolve()),
        "--num_processes", "2", "--main_process_port", "29511", "-m", "harness.execution.worker", "train", "RUN",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="field 'launcher.accelerate_config': file not found"):
        parse_run_config(_cfg(cfg, 4, {"accelerate_config": str(tmp_path / "missing.yaml")}))


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, tiny_toy):
    cfg, _ = tiny_toy
    single = RunDir(tmp_path / "single")
    train(parse_run_config(_cfg(cfg, 8)), single)

    acc = tmp_path / "accelerate.yaml"
    acc.write_text(ACCELERATE_CONFIG)
    run_cfg = parse_run_config(
        _cfg(cfg, 4, {"accelerate_config": str(acc), "num_processes": 2, "main_process_port": _free_port()})
    )
    assert run_cfg.training_path == "fused"  # the default: both processes train on the fused path
    # Through the command line: `otr-harness train` launches the stage with train_command's argv.
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_cfg.model_dump(mode="json")))
    multi = RunDir(tmp_path / "multi")
    code = cli.main(["train", str(tmp_path / "run.yaml"), "--out", str(multi.path)])
    assert code == 0, multi.failure("train")
    assert multi.is_done("train") and not multi.is_failed("train")

    one = [json.loads(line) for line in single.metrics_file.read_text().splitlines()]
    two = [json.loads(line) for line in multi.metrics_file.read_text().splitlines()]
    assert [m["step"] for m in two] == [1, 2, 3]  # one line per step: only rank 0 writes
    for a, b in zip(one, two, strict=True):
        assert b["tokens"] == a["tokens"], b["step"]  # counted over both processes
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), b["step"]
        assert b["token_acc"] == pytest.approx(a["token_acc"], rel=1e-5), b["step"]
    s1 = json.loads(single.summary_file.read_text())
    s2 = json.loads(multi.summary_file.read_text())
    assert (s2["num_processes"], s1["num_processes"]) == (2, 1)
    assert s2["response_tokens"] == s1["response_tokens"] > 0
    m1 = AutoModelForCausalLM.from_pretrained(single.final_model)
    m2 = AutoModelForCausalLM.from_pretrained(multi.final_model)
    for (name, p), q in zip(m1.named_parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    assert not list(multi.train_dir.glob(".*.tmp"))  # nothing half-written left behind
