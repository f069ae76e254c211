"""Exceptions raised by the loader.

Why a hierarchy: callers (agent, CLI) need to tell "you are not root" (tell the user, exit) from "the
verifier rejected the program" (a bug: show the verifier log) from "this kernel lacks a feature"
(degrade or explain) without parsing messages.
"""

from __future__ import annotations

import errno as _errno
import os


class BpfError(OSError):
    """A failed bpf()/libbpf call. ``errno`` is the positive errno value.

    Subclasses OSError so ``except OSError`` still works and ``.errno``/``.strerror`` are standard.
    """

    def __init__(self, err: int, what: str, detail: str | None = None) -> None:
        super().__init__(err, os.strerror(err) if err > 0 else "unknown error")
        self.what = what
        self.detail = detail

    def __str__(self) -> str:
        s = f"{self.what}: [Errno {self.errno}] {self.strerror}"
        if self.detail:
            s += f" ({self.detail})"
        return s


class LoadError(BpfError):
    """A BPF object failed to load; carries the verifier/libbpf log so the cause is visible."""

    def __init__(
        self,
        err: int,
        path: str,
        program: str | None = None,
        log: str = "",
        tail_lines: int = 40,
    ) -> None:
        super().__init__(err, f"loading BPF object {path}")
        self.path = path
        self.program = program
        self.log = log
        self.tail_lines = tail_lines

    @property
    def log_tail(self) -> str:
        lines = self.log.rstrip("\n").splitlines()
        return "\n".join(lines[-self.tail_lines :])

    def __str__(self) -> str:
        s = f"failed to load BPF object {self.path}"
        if self.program:
            s += f" (program {self.program!r})"
        s += f": [Errno {self.errno}] {self.strerror}"
        tail = self.log_tail
        if tail:
            s += "\n--- libbpf/verifier log (tail) ---\n" + tail
        return s


class MissingPrivilegeError(BpfError):
    """Not root / missing CAP_BPF or CAP_NET_ADMIN: one clear line, no traceback-worthy detail."""

    def __init__(self, what: str, err: int = _errno.EPERM) -> None:
        super().__init__(err, what)

    def __str__(self) -> str:
        return f"tendril needs root (CAP_BPF, CAP_NET_ADMIN) to load eBPF programs: {self.what}"


class MissingFeatureError(BpfError):
    """The kernel lacks something Tendril needs (bpffs, BTF, tcx, ...)."""

    def __init__(self, what: str, err: int = _errno.EOPNOTSUPP) -> None:
        super().__init__(err, what)

    def __str__(self) -> str:
        return f"kernel feature missing: {self.what} [Errno {self.errno}] {self.strerror}"


_CAP_NET_ADMIN = 12
_CAP_SYS_ADMIN = 21
_CAP_BPF = 39


def effective_caps() -> int:
    """The CapEff bitmask of this process (from /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def has_bpf_privileges() -> bool:
    """True if we can plausibly load tc programs: (CAP_BPF or CAP_SYS_ADMIN) and CAP_NET_ADMIN."""
    caps = effective_caps()
    bpf = bool(caps & (1 << _CAP_BPF)) or bool(caps & (1 << _CAP_SYS_ADMIN))
    return bpf and bool(caps & (1 << _CAP_NET_ADMIN))


def privilege_error_for(err: int, what: str) -> BpfError | None:
    """Map EPERM/EACCES to MissingPrivilegeError when we indeed lack capabilities, else None."""
    if err in (_errno.EPERM, _errno.EACCES) and not has_bpf_privileges():
        return MissingPrivilegeError(f"{what} (euid {os.geteuid()})", err)
    return None
