"""A BPF ELF object: open, size maps, load (with pinned-map reuse), find programs and maps.

Why pin_root: maps declared with ``__uint(pinning, LIBBPF_PIN_BY_NAME)`` are pinned by libbpf at
``<pin_root>/<map name>`` and, if a compatible map is already pinned there, libbpf reuses it instead
of creating a new one. That is what lets a restarted or upgraded agent keep conntrack, endpoints and
queued events.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from tendril.bpf import libbpf as lb
from tendril.bpf.errors import (
    BpfError,
    LoadError,
    MissingPrivilegeError,
    has_bpf_privileges,
    privilege_error_for,
)
from tendril.bpf.maps import Map


@dataclass(frozen=True)
class Program:
    """A loaded program: its fd stays valid while the owning BpfObject is open."""

    name: str
    fd: int


class BpfObject:
    """Owns a libbpf ``struct bpf_object``. Use as a context manager or call :meth:`close`."""

    def __init__(self, ptr: int, path: Path, pin_root: Path | None) -> None:
        self._ptr: int | None = ptr
        self.path = path
        self.pin_root = pin_root
        self.loaded = False
        self._maps: dict[str, Map] = {}

    @classmethod
    def open(
        cls,
        path: str | Path,
        pin_root: str | Path | None = None,
        map_sizes: dict[str, int] | None = None,
    ) -> BpfObject:
        """Parse the ELF (no kernel objects yet); map_sizes overrides max_entries by map name."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "BPF object not found", str(path))
        opts = lb.bpf_object_open_opts(sz=ctypes.sizeof(lb.bpf_object_open_opts))
        pin_b = None
        if pin_root is not None:
            pin_root = Path(pin_root)
            pin_root.mkdir(parents=True, exist_ok=True)
            pin_b = os.fsencode(pin_root)
            opts.pin_root_path = pin_b
        with lb.capture_log() as logbuf:
            ptr = lb.bpf_object__open_file(os.fsencode(path), ctypes.byref(opts))
        if not ptr:
            err = ctypes.get_errno() or errno.EINVAL
            raise LoadError(err, str(path), None, "".join(logbuf))
        obj = cls(ptr, path, pin_root)
        obj._pin_b = pin_b  # libbpf copies the string, but keep it alive anyway
        try:
            for name, size in (map_sizes or {}).items():
                m = obj._map_ptr(name)
                lb.check(lb.bpf_map__set_max_entries(m, size), f"set_max_entries({name}, {size})")
        except BaseException:
            obj.close()
            raise
        return obj

    # ---- internals ----

    @property
    def ptr(self) -> int:
        if not self._ptr:
            raise ValueError(f"BPF object {self.path} is closed")
        return self._ptr

    def _map_ptr(self, name: str) -> int:
        m = lb.bpf_object__find_map_by_name(self.ptr, name.encode())
        if not m:
            raise KeyError(f"no map {name!r} in {self.path}")
        return m

    def _prog_ptr(self, name: str) -> int:
        p = lb.bpf_object__find_program_by_name(self.ptr, name.encode())
        if not p:
            raise KeyError(f"no program {name!r} in {self.path}")
        return p

    def program_names(self) -> list[str]:
        names, p = [], None
        while True:
            p = lb.bpf_object__next_program(self.ptr, p)
            if not p:
                return names
            names.append(lb.bpf_program__name(p).decode())

    def map_names(self) -> list[str]:
        names, m = [], None
        while True:
            m = lb.bpf_object__next_map(self.ptr, m)
            if not m:
                return names
            names.append(lb.bpf_map__name(m).decode())

    # ---- before load ----

    def reuse_map(self, name: str, m: Map | int) -> None:
        """Make the object use an existing map fd (e.g. one opened from another pin path)."""
        fd = m.fd if isinstance(m, Map) else m
        lb.check(lb.bpf_map__reuse_fd(self._map_ptr(name), fd), f"reuse_fd({name})")

    def set_pin_path(self, name: str, path: str | Path | None) -> None:
        """Pin/reuse one map at an explicit path (overrides pin_root for it)."""
        p = None if path is None else os.fsencode(path)
        lb.check(lb.bpf_map__set_pin_path(self._map_ptr(name), p), f"set_pin_path({name})")

    def set_max_entries(self, name: str, n: int) -> None:
        lb.check(lb.bpf_map__set_max_entries(self._map_ptr(name), n), f"set_max_entries({name})")

    # ---- load ----

    def load(self) -> None:
        """Create maps (reusing pinned ones), load and verify programs.

        Raises LoadError carrying the libbpf/verifier log, or MissingPrivilegeError when the failure
        is EPERM and we lack capabilities.
        """
        if not has_bpf_privileges():
            # Fail before libbpf prints a page of RLIMIT/probe noise for the same cause.
            raise MissingPrivilegeError(f"loading {self.path} (euid {os.geteuid()})")
        with lb.capture_log() as logbuf:
            rc = lb.bpf_object__load(self.ptr)
        if rc < 0:
            err = -rc
            text = "".join(logbuf)
            priv = privilege_error_for(err, f"loading {self.path}")
            if priv is not None:
                raise priv
            raise LoadError(err, str(self.path), _failed_program(text), text)
        self.loaded = True

    # ---- after load ----

    def program(self, name: str) -> Program:
        p = self._prog_ptr(name)
        fd = lb.bpf_program__fd(p)
        if fd < 0:
            raise BpfError(-fd if fd < -1 else errno.EINVAL, f"program {name!r} not loaded")
        return Program(name, fd)

    def map(self, name: str) -> Map:
        """The loaded map (fd owned by the object: do not close it; it closes with the object)."""
        if name in self._maps:
            return self._maps[name]
        fd = lb.bpf_map__fd(self._map_ptr(name))
        if fd < 0:
            raise BpfError(-fd if fd < -1 else errno.EINVAL, f"map {name!r} not created (load first)")
        m = Map(fd, name, owns_fd=False)
        self._maps[name] = m
        return m

    def close(self) -> None:
        """Free the object: programs/maps stay alive only if pinned or attached via a link."""
        if self._ptr:
            for m in self._maps.values():
                m.fd = -1
            self._maps.clear()
            lb.bpf_object__close(self._ptr)
            self._ptr = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"BpfObject({str(self.path)!r}, loaded={self.loaded}, pin_root={self.pin_root})"


def _failed_program(log: str) -> str | None:
    """Extract the program name from libbpf's "prog 'NAME': ..." failure lines."""
    name = None
    for line in log.splitlines():
        if line.startswith("libbpf: prog '"):
            name = line[len("libbpf: prog '") :].split("'", 1)[0]
            if "failed to load" in line or "BEGIN PROG LOAD LOG" in line:
                return name
    return name


__all__ = ["BpfObject", "Program", "MissingPrivilegeError"]
