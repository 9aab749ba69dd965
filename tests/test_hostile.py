"""A hostile corpus against harness.eval.sandbox: every program must be contained under bwrap.

Each program exits 0 only if its attack worked (a read that got the data, a write that happened, a
connection that was made), so "scored failed" is the first condition of containment; the test also
checks from outside, per program: nothing of a secret in its output, the files it targets untouched,
no connection on the test's listening sockets, no signal received, the sentinel process alive, and no
process of the run still alive once it returned. The figure (contained / total) is printed per layer:

- ``bwrap`` (production: bubblewrap + the Python guard): every program contained (asserted);
- ``bwrap, no audit hook`` (bubblewrap, its seccomp filter and the limits, without the Python guard's
  audit hook): what the OS layer contains by itself — every program too (asserted);
- ``guard`` (the fallback): the reads outside the working directory are NOT contained (asserted as the
  exact known set: the guard blocks writes, processes, sockets and signals, not reads).

Run with ``-s`` to see the figure. Skips only when bubblewrap cannot run here (the reason is printed).
About 30 s (two programs per layer wait out the time limits). Nothing is ever run without a layer that
stops signals to other processes (no ``kill -1`` in the corpus: on an uncontained layer it would hit
every process of the machine).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import pytest

from harness.eval import sandbox
from harness.paths import repo_root

TIMEOUT_S = 1.0

# name -> program ($-placeholders filled per run). Each exits 0 only if the attack succeeded.
CORPUS: dict[str, str] = {
    "read /etc/shadow": "print(open('/etc/shadow').read())\n",
    "read a file in $HOME": "print(open('$HOME_SECRET').read())\n",
    "read the repository": "print(open('$REPO_FILE').read())\n",
    "environment tokens": "import os\nprint(os.environ['HF_TOKEN'], os.environ['OTR_TEST_TOKEN'])\n",
    "the harness's environment via /proc": "print(open('/proc/$HARNESS_PID/environ', 'rb').read())\n",
    "another process's memory map via /proc": "print(open('/proc/$SENTINEL_PID/maps').read())\n",
    "write outside": "open('$TARGET', 'w').write('escaped')\n",
    "hard link outside": "import os\nos.link('$VICTIM', 'mine')\nopen('mine', 'a').write('changed')\n",
    "rename outside": "import os\nos.rename('$VICTIM', '$VICTIM.moved')\n",
    "delete outside": "import os\nos.unlink('$VICTIM')\n",
    "chmod and utime outside": "import os\nos.chmod('$VICTIM', 0o777)\nos.utime('$VICTIM', (0, 0))\n",
    "symlink to a secret": "import os\nos.symlink('$SECRET', 'link')\nprint(open('link').read())\n",
    "write through a symlink": "import os\nos.symlink('$TARGET', 'link')\nopen('link', 'w').write('x')\n",
    "fork bomb": "import os\nwhile True:\n    os.fork()\n",
    "memory bomb": "x = []\nwhile True:\n    x.append(bytearray(10**8))\n",
    "endless output": "while True:\n    print('y' * 10000)\n",
    "a child that outlives its parent": (
        "import os, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n    time.sleep(60)\n"
    ),
    "network to loopback: the test's bound port": (
        "import socket\ns = socket.create_connection(('127.0.0.1', $PORT), timeout=2)\ns.sendall(b'hi')\n"
    ),
    "a unix socket of the test": (
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('$UNIX_SOCKET')\ns.sendall(b'hi')\n"
    ),
    "signals to the parent, the harness, a sentinel": (
        "import os, signal\nos.kill(os.getppid(), signal.$SIGNAL)\nos.kill($HARNESS_PID, signal.$SIGNAL)\n"
        "os.kill($SENTINEL_PID, signal.SIGKILL)\n"
    ),
    "write /proc/self/mem": "f = open('/proc/self/mem', 'r+b')\nf.seek(0x400000)\nf.write(b'x')\n",
    "raise the limits": (
        "import resource\nfor r in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE):\n"
        "    resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
    ),
    "exec a shell": "import os\nos.execv('/bin/sh', ['sh', '-c', 'cat /etc/shadow; touch $TARGET'])\n",
    "raw syscalls through ctypes: fork, unshare": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "new_user_namespace = libc.unshare(0x10000000) == 0\nforked = libc.fork() >= 0\n"
        "assert new_user_namespace or forked\n"
    ),
    "ignore the time limit, sleeping": "import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\ntime.sleep(60)\n",
    "ignore the time limit, spinning": "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n",
}
# What the Python guard alone cannot stop (it blocks writes, processes, sockets, signals; not reads).
GUARD_MISSES = {
    "read /etc/shadow",
    "read a file in $HOME",
    "read the repository",
    "the harness's environment via /proc",
    "another process's memory map via /proc",
}
LAYERS = {  # name -> (layer, audit hook, the signal its signal probe sends)
    "bwrap": ("bwrap", True, "SIGUSR1"),
    "bwrap, no audit hook": ("bwrap", False, "SIGUSR2"),
    "guard": ("guard", True, "SIGWINCH"),
}


@dataclass
class Context:
    """Per-layer targets (files, sockets, a sentinel) and what the test saw happen."""

    root: Path
    home_secret: Path
    signal: str
    secret_token: str = field(default_factory=lambda: f"otr-secret-{uuid.uuid4().hex}")
    listener: socket.socket | None = None
    unix: socket.socket | None = None
    sentinel: subprocess.Popen | None = None

    def reset(self) -> None:
        """Fresh victim and secret files, no target, for the next program."""
        for p in (self.target, self.root / "victim.txt.moved"):
            p.unlink(missing_ok=True)
        self.victim.write_text("precious")
        os.chmod(self.victim, 0o644)
        os.utime(self.victim, (1_000_000_000, 1_000_000_000))
        self.secret.write_text(self.secret_token)

    @property
    def victim(self) -> Path:
        return self.root / "victim.txt"

    @property
    def target(self) -> Path:
        return self.root / "escaped.txt"

    @property
    def secret(self) -> Path:
        return self.root / "secret.txt"

    def values(self) -> dict[str, str]:
        assert self.listener and self.unix and self.sentinel
        return {
            "HOME_SECRET": str(self.home_secret),
            "REPO_FILE": str(repo_root() / "pyproject.toml"),
            "HARNESS_PID": str(os.getpid()),
            "SENTINEL_PID": str(self.sentinel.pid),
            "TARGET": str(self.target),
            "VICTIM": str(self.victim),
            "SECRET": str(self.secret),
            "PORT": str(self.listener.getsockname()[1]),
            "UNIX_SOCKET": str(self.unix.getsockname()),
            "SIGNAL": self.signal,
        }


def _survivors(markers: tuple[str, ...]) -> list[int]:
    """Processes still holding the captured stdout/stderr of a finished (deleted) sandbox run whose
    command line (the guard's JSON config) has every one of ``markers``: the runs of one layer."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            outs = [os.readlink(proc / "fd" / fd) for fd in ("1", "2")]
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        finished = any(re.search(r"otr-sandbox-[^/]+/\.std(out|err) \(deleted\)$", o) for o in outs)
        if finished and all(m in cmdline for m in markers):
            pids.append(int(proc.name))
    return pids


def _lasting_survivors(markers: tuple[str, ...]) -> list[int]:
    """Survivors that are still there after 1 s (a SIGKILLed namespace takes a moment to empty)."""
    deadline = time.time() + 1.0
    while (pids := _survivors(markers)) and time.time() < deadline:
        time.sleep(0.05)
    return pids


def _shadow_lines() -> list[str]:
    try:
        return [line for line in Path("/etc/shadow").read_text().splitlines() if ":" in line]
    except OSError:  # not root: the probe still runs, nothing to leak
        return []


def _violations(
    name: str, r: sandbox.SandboxResult, ctx: Context, received: list[int], markers: tuple[str, ...]
) -> list[str]:
    """Why the run of ``name`` was not contained (never the leaked data itself); empty if it was."""
    out = r.stdout + r.stderr
    found = []
    if r.passed:
        found.append("the attack ran to its end (scored passed)")
    if ctx.secret_token in out:
        found.append("a secret token is in its output")
    if any(line in out for line in _shadow_lines()) or "root:" in r.stdout:
        found.append("/etc/shadow content is in its output")
    if name == "read the repository" and "otr-harness" in out:
        found.append("the repository file is in its output")
    if b"OTR_TEST_TOKEN" in out.encode() or "HF_TOKEN=" in out or "r-7f3" in out:
        found.append("an environment token is in its output")
    if name == "another process's memory map via /proc" and "r-xp" in out:
        found.append("a memory map is in its output")
    if ctx.target.exists() or (ctx.root / "victim.txt.moved").exists():
        found.append("a file outside was written / renamed")
    if not ctx.victim.exists() or ctx.victim.read_text() != "precious":
        found.append("the victim file was changed or removed")
    elif ctx.victim.stat().st_mtime != 1_000_000_000 or (ctx.victim.stat().st_mode & 0o777) != 0o644:
        found.append("the victim file's metadata changed")
    for sock in (ctx.listener, ctx.unix):
        try:
            conn, _ = sock.accept()
            conn.close()
            found.append("a connection reached the test's socket")
        except (TimeoutError, BlockingIOError):
            pass
    if received:
        found.append(f"the test process received signal(s) {received}")
        received.clear()
    if ctx.sentinel.poll() is not None:
        found.append("the sentinel process was killed")
    if _lasting_survivors(markers):
        found.append("a process of the run outlived it")
    return found


def _run_layer(label: str, ctx: Context, received: list[int]) -> dict[str, list[str]]:
    layer, hook, _ = LAYERS[label]
    lib = '"lib": "/sandbox/lib"' if layer == "bwrap" else '"lib": null'
    markers = (f'"hook": {str(hook).lower()}', lib)
    outcome = {}
    for name, template in CORPUS.items():
        ctx.reset()
        program = Template(template).substitute(ctx.values())
        r = sandbox.run_program(program, timeout_s=TIMEOUT_S, memory_mb=256, layer=layer, audit_hook=hook)
        outcome[name] = _violations(name, r, ctx, received, markers)
    return outcome


@pytest.fixture
def contexts(tmp_path, monkeypatch):
    """One context per layer, with its listening sockets and sentinel; a secret file in $HOME (removed
    afterwards) and tokens in the harness's environment."""
    monkeypatch.setenv("HF_TOKEN", "hf_r-7f3-test-token")
    monkeypatch.setenv("OTR_TEST_TOKEN", "r-7f3-otr")
    home_secret = Path.home() / f".otr-hostile-{uuid.uuid4().hex}"
    out = {}
    try:
        for i, (label, (_, _, sig)) in enumerate(LAYERS.items()):
            root = tmp_path / f"layer{i}"
            root.mkdir()
            ctx = Context(root=root, home_secret=home_secret, signal=sig)
            ctx.listener = socket.create_server(("127.0.0.1", 0))
            ctx.listener.setblocking(False)
            ctx.unix = socket.socket(socket.AF_UNIX)
            ctx.unix.bind(str(root / "s.sock"))
            ctx.unix.listen()
            ctx.unix.setblocking(False)
            ctx.sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            out[label] = ctx
        home_secret.write_text(
            out["bwrap"].secret_token + " " + " ".join(c.secret_token for c in out.values())
        )
        yield out
    finally:
        home_secret.unlink(missing_ok=True)
        for ctx in out.values():
            ctx.sentinel.kill()
            ctx.sentinel.wait()
            ctx.listener.close()
            ctx.unix.close()


def test_hostile_corpus_is_contained_under_bwrap(contexts):
    problem = sandbox.bwrap_problem()
    if problem is not None:
        pytest.skip(f"bubblewrap cannot run here: {problem}")
    assert len(CORPUS) >= 20
    received: list[int] = []
    handlers = {
        s: signal.signal(getattr(signal, s), lambda n, f: received.append(n)) for *_, s in LAYERS.values()
    }
    try:
        # The three layers in parallel (each sequential over the corpus, with its own files and sockets).
        with ThreadPoolExecutor(max_workers=len(LAYERS)) as pool:
            futures = {label: pool.submit(_run_layer, label, contexts[label], received) for label in LAYERS}
            outcomes = {label: f.result() for label, f in futures.items()}
        # the evaluation goes on: a correct program still passes in every layer
        for layer, hook, _ in LAYERS.values():
            assert sandbox.run_program("assert 1 + 1 == 2\n", layer=layer, audit_hook=hook).passed
    finally:
        for s, h in handlers.items():
            signal.signal(getattr(signal, s), h)
    lines = ["hostile corpus: contained / total, per layer"]
    for label, outcome in outcomes.items():
        missed = sorted(n for n, v in outcome.items() if v)
        lines.append(f"  {label:22s} {len(outcome) - len(missed)}/{len(outcome)}")
        lines += [f"      not contained: {n}: {'; '.join(outcome[n])}" for n in missed]
    print("\n" + "\n".join(lines))
    for label in ("bwrap", "bwrap, no audit hook"):
        missed = {n: v for n, v in outcomes[label].items() if v}
        assert not missed, f"{label}: not contained: {missed}"
    guard_missed = {n for n, v in outcomes["guard"].items() if v}
    assert guard_missed == GUARD_MISSES, guard_missed ^ GUARD_MISSES


def test_shadow_probe_prints_nothing_of_the_file_under_bwrap():
    problem = sandbox.bwrap_problem()
    if problem is not None:
        pytest.skip(f"bubblewrap cannot run here: {problem}")
    r = sandbox.run_program(CORPUS["read /etc/shadow"], layer="bwrap")
    # Booleans first: a failing assert must not display the program's output (it could be the file).
    not_found = r.status == "failed" and "FileNotFoundError" in r.stderr
    printed_nothing = r.stdout == ""
    leaked = any(line in r.stdout + r.stderr for line in _shadow_lines())
    assert not_found, f"status {r.status}: the file should not exist in the sandbox"
    assert printed_nothing and not leaked, "the /etc/shadow probe printed something"
