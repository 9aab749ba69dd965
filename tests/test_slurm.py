"""The slurm executor against a real single-node SLURM cluster started here from Debian's slurm-wlm.

The cluster (munged, slurmctld, slurmd; state, spool, logs and the munge key in a temp dir, ports picked
free) is started once per module and stopped afterwards. Without slurm-wlm/munge, or without root (slurmd
must start jobs as the submitting user), or when the daemons do not come up, the tests skip and say why.
`.ci/run` installs slurm-wlm and munge.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import toy
from harness.config import ConfigError, SlurmConfig, load_sweep_config
from harness.runs.layout import RunDir

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line(host: str) -> str:
    """The node's real CPUs and memory, as slurmd itself detects them (``slurmd -C``)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    first = out.splitlines()[0] if out else ""
    cpus = re.search(r"CPUs=(\d+)", first)
    mem = re.search(r"RealMemory=(\d+)", first)
    if not cpus or not mem:
        pytest.skip(f"slurm: could not read the node's resources from `slurmd -C`: {out!r}")
    return f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus[1]} RealMemory={mem[1]} State=UNKNOWN"


SLURM_CONF = """\
ClusterName=otrtest
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=300
KillWait=5
{node}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster; yields the path of its slurm.conf (also exported as SLURM_CONF)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"slurm: '{missing[0]}' not found; install Debian's slurm-wlm and munge (.ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("slurm: starting slurmd needs root (it launches jobs as the submitting user)")
    # A short path: the munge socket path must fit in sockaddr_un (108 bytes).
    d = Path(tmp_path_factory.mktemp("slurm", numbered=True))
    for sub in ("munge", "state", "spool", "log"):
        (d / sub).mkdir(mode=0o700)
    d.chmod(0o711)  # munged checks that the socket's directories are not writable by others
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname()
    conf = d / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(host=host, d=d, ctld_port=_free_port(), d_port=_free_port(), node=_node_line(host))
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log: str) -> None:
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                stdout=(d / "log" / log).open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def logs() -> str:
        return " | ".join(
            f"{p.name}: " + " / ".join(p.read_text(errors="replace").strip().splitlines()[-3:])
            for p in sorted((d / "log").iterdir())
            if p.stat().st_size
        )

    old_conf = os.environ.get("SLURM_CONF")
    try:
        munge_sock = d / "munge" / "munge.sock"
        start(
            ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge_sock}",
             f"--pid-file={d}/munge/munged.pid", f"--seed-file={d}/munge/seed", f"--log-file={d}/log/munged.log"],
            "munged.out",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not munge_sock.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not munge_sock.exists():
            pytest.skip(f"slurm: munged did not start: {logs()}")
        start(["slurmctld", "-D", "-f", str(conf)], "slurmctld.out")
        start(["slurmd", "-D", "-f", str(conf)], "slurmd.out")
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            res = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            state = res.stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        if state != "idle":
            pytest.skip(f"slurm: the cluster did not come up (node state {state!r}): {logs()}")
        os.environ["SLURM_CONF"] = str(conf)
        yield conf
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        for p in reversed(procs):  # slurmd, slurmctld, munged: only the processes started here
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _sweep(toy_cfg, **slurm) -> dict:
    """Base-model evaluation + one 2-step SFT run on the tiny toy world: the smallest sweep with both stages."""
    return {
        "name": "slurmtest",
        "toy": toy_cfg.model_dump(mode="json"),
        "base": {
            "model": "toy:base",
            "dataset": toy.dataset_config(max_length=96, max_examples=16),
            "training": {
                "learning_rate": 1e-3,
                "per_device_train_batch_size": 4,
                "max_steps": 2,
                "logging_steps": 1,
            },
            "eval": {"suites": ["toy"], "limit": 2, "batch_size": 4},
        },
        "variants": {"sft": {"objective": {"name": "sft"}}},
        "seeds": [0],
        "slurm": {"cpus_per_task": 1, "mem": "2G", "time": 20, **slurm},
    }


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OTR_HARNESS_SLURM_POLL": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def _stage_starts(run: RunDir, stage: str) -> int:
    log = run.log_file(stage)
    return log.read_text().count(f"===== {stage} started") if log.exists() else 0


@pytest.mark.slow
def test_slurm_array_runs_resumes_and_attaches(tmp_path, tiny_toy, slurm_cluster):
    """Submit without waiting (the array held: `--hold` through additional_parameters), attach with a second
    `sweep run` (nothing submitted twice), release, and a third `sweep run` skips the finished sweep: every
    stage ran exactly once, in one array task per run."""
    cfg, _ = tiny_toy
    sweep_file = tmp_path / "slurmtest.yaml"
    sweep_file.write_text(yaml.safe_dump(_sweep(cfg, additional_parameters={"hold": True})))
    out = tmp_path / "runs"
    t0 = time.monotonic()

    first = _cli(
        "sweep", "run", str(sweep_file), "--out", str(out), "--executor", "slurm", "--no-wait", cwd=tmp_path
    )
    assert first.returncode == 0, first.stdout + first.stderr
    job = re.search(r"submitted SLURM job (\d+): 2 task\(s\)", first.stdout)
    assert job, first.stdout
    status = _cli("sweep", "status", str(out), cwd=tmp_path)
    rows = [line.split() for line in status.stdout.splitlines() if line and not line[0].isdigit()]
    assert status.returncode == 0 and sum(r[-1] == "queued" for r in rows) == 2, status.stdout
    assert "2 queued" in status.stdout.splitlines()[-1], status.stdout  # the counts line agrees

    # A second `sweep run` finds both tasks in the queue and waits for them instead of resubmitting.
    log = tmp_path / "second.out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OTR_HARNESS_SLURM_POLL": "1",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    with log.open("w") as f:
        second = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "sweep", "run", str(sweep_file), "--out", str(out),
             "--executor", "slurm"], cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "attached" not in log.read_text() and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "2 runs already queued or running on SLURM (attached" in log.read_text(), log.read_text()
        subprocess.run(["scontrol", "release", job[1]], check=True)
        second.wait(timeout=600)
    finally:
        if second.poll() is None:
            second.kill()
    text = log.read_text()
    assert second.returncode == 0, text
    assert "submitted SLURM job" not in text and "all 2 runs done" in text, text

    runs = {p.name.split("-")[0]: RunDir(p) for p in out.iterdir() if (p / "config.yaml").exists()}
    assert set(runs) == {"base", "sft"}
    task_ids = set()
    for name, run in runs.items():
        stages = ("eval",) if name == "base" else ("train", "eval")
        assert all(run.is_done(s) for s in stages), name
        assert all(_stage_starts(run, s) == 1 for s in stages), name  # exactly once
        rec = json.loads((run.path / "logs" / "slurm.json").read_text())
        assert rec["job_id"].startswith(job[1] + "_")
        task_ids.add(rec["job_id"])
        task_log = Path(rec["stdout"]).read_text()
        assert f"run {run.run_id}: done" in task_log and "done " + run.run_id in task_log, task_log
        results = json.loads((run.eval_dir("toy") / "results.json").read_text())
        assert {r["n"] for r in results["tasks"].values()} == {2}
    assert task_ids == {f"{job[1]}_0", f"{job[1]}_1"}  # one array task per run
    # One array: submitit's folders of its tasks (+ the array's own, holding its sbatch script), nothing else.
    folders = {p.name for p in (out / "slurm").iterdir() if not p.name.startswith(".")}
    assert task_ids <= folders <= task_ids | {job[1]}, folders

    third = _cli(
        "sweep", "run", str(sweep_file), "--out", str(out), "--executor", "slurm", "--no-report", cwd=tmp_path
    )
    assert third.returncode == 0 and "2 done (skipped), 0 to run" in third.stdout, third.stdout
    assert "submitted" not in third.stdout
    print(f"slurm sweep: {time.monotonic() - t0:.0f} s")


@pytest.mark.slow
def test_slurm_task_that_dies_is_marked_failed_and_rerun(tmp_path, tiny_toy, slurm_cluster):
    """A task cancelled mid-run (as by a time limit or node failure) while `sweep run` waits leaves its run
    failed with the reason and the command exits 1; the next `sweep run` submits the run again and it ends
    done."""
    cfg, _ = tiny_toy
    data = _sweep(cfg)
    data["evaluate_base"] = False
    sweep_file = tmp_path / "cancel.yaml"
    sweep_file.write_text(yaml.safe_dump(data))
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "harness.cli", "sweep", "run", str(sweep_file), "--out", str(out),
           "--executor", "slurm", "--no-report"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OTR_HARNESS_SLURM_POLL": "1"}
    waiting = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        logs = []
        while not logs and time.monotonic() < deadline and waiting.poll() is None:
            time.sleep(0.5)
            logs = list(out.glob("*/logs/train.log"))
        assert logs, "the task never started its training stage"
        run = RunDir(logs[0].parents[1])
        job_id = json.loads((run.path / "logs" / "slurm.json").read_text())["job_id"]
        subprocess.run(["scancel", job_id.split("_")[0]], check=True)
        stdout, _ = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 1, stdout
    assert f"FAILED {run.run_id} (SLURM task {job_id})" in stdout and "1 of 1 runs failed" in stdout, stdout
    # scancel signals the task and its stage process together: whichever records the failure first wins —
    # the task's own record of its stage's signal exit, or the settling of a task that died before writing.
    failure = run.failure("train") or ""
    assert f"SLURM task {job_id} ended" in failure or "exit code -15" in failure, failure

    again = _cli(
        "sweep", "run", str(sweep_file), "--out", str(out), "--executor", "slurm", "--no-report", cwd=tmp_path
    )
    assert again.returncode == 0 and "submitted SLURM job" in again.stdout, again.stdout + again.stderr
    assert run.is_done("train") and run.is_done("eval") and not run.is_failed("train")
    assert json.loads((run.path / "logs" / "slurm.json").read_text())["job_id"] != job_id


# --- no cluster needed --------------------------------------------------------------------------------
def test_sbatch_script_carries_the_configured_resources(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    from harness.execution.slurm import _parameters

    cfg = SlurmConfig(
        partition="gpu",
        time="2:00:00",
        cpus_per_task=8,
        gpus_per_node=1,
        mem="64G",
        account="lab",
        qos="high",
        setup=["module load cuda"],
        additional_parameters={"mail-type": "END", "exclusive": True},
    )
    params = _parameters(cfg, "demo", max_parallel=4)
    script = _make_sbatch_string(command="python -m x", folder=tmp_path / "%j", map_count=10, **params)
    for flag in (
        "--partition=gpu",
        "--time=2:00:00",
        "--cpus-per-task=8",
        "--gpus-per-node=1",
        "--mem=64G",
        "--account=lab",
        "--qos=high",
        "--mail-type=END",
        "--exclusive",
        "--array=0-9%4",
        "--job-name=otr-demo",
    ):
        assert f"#SBATCH {flag}\n" in script, (flag, script)
    assert "module load cuda" in script


@pytest.mark.parametrize(
    ("slurm", "needle"),
    [
        ({"partiton": "gpu"}, "slurm.partiton"),
        ({"time": 0}, "slurm.time"),
        ({"time": "two hours"}, "slurm.time"),
        ({"cpus_per_task": 0}, "slurm.cpus_per_task"),
        ({"gpus_per_node": "one"}, "slurm.gpus_per_node"),
        ({"mem": "lots"}, "slurm.mem"),
        ({"additional_parameters": {"array": "0-3"}}, "set by the harness"),
        ({"additional_parameters": {"partition": "x"}}, "slurm.partition instead"),
        ({"additional_parameters": {"Bad Name": 1}}, "sbatch option"),
    ],
)
def test_bad_slurm_block_fails_naming_the_field(tmp_path, slurm, needle):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "base": {"model": "toy:base"}, "slurm": slurm}))
    with pytest.raises(ConfigError) as err:
        load_sweep_config(path)
    msg = str(err.value)
    assert "\n" not in msg and "slurm" in msg and needle in msg, msg


def test_slurm_executor_without_slurm_is_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from harness.cli import main
    from harness.paths import repo_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    code = main(["sweep", "run", str(repo_root() / "sweeps" / "demo.yaml"), "--executor", "slurm"])
    err = capsys.readouterr().err
    assert code == 2 and "sbatch" in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_task_that_left_its_run_unfinished_is_recorded_as_failed(tmp_path):
    from harness.execution import slurm
    from harness.execution.plan import plan
    from harness.execution.stages import freeze as _freeze

    data = {"name": "x", "base": {"model": "toy:base"}, "variants": {"eval_only": {}}, "evaluate_base": False}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    (p,) = plan(path, tmp_path / "runs").runs
    assert p.stages == ("eval",)
    _freeze(p, "x")
    log = tmp_path / "task.err"
    log.write_text("slurmstepd: error: *** JOB 7 CANCELLED DUE TO TIME LIMIT ***\n")
    (p.run.path / "logs").mkdir()
    (p.run.path / "logs" / "slurm.json").write_text(json.dumps({"job_id": "7_0", "stderr": str(log)}))
    assert slurm._settle(p, "7_0") == "failed"
    failure = p.run.failure("eval")
    assert "TIME LIMIT" in failure and failure.strip().splitlines()[-1].startswith("SLURM task 7_0 ended")
    p.run.mark_done("eval")
    assert slurm._settle(p, "7_0") == "done"
