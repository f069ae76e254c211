"""Named network namespaces: create, delete, enter.

Namespaces are the lab's nodes and pods, so everything else in the datapath
goes through here.  Two ways in are offered on purpose:

* ``iproute(name)`` / ``call_in_netns(name, fn)`` for in-process work
  (netlink, sysctls) -- cheap, no fork of a shell tool;
* ``run_in_netns(name, argv)`` for external programs.  It uses
  ``nsenter --net=`` rather than ``ip netns exec`` because the latter
  remounts /sys, which hides /sys/fs/bpf and the cgroup v2 tree from the
  child.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as _pr_netns

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc: ctypes.CDLL | None = None


class NetnsError(RuntimeError):
    """A named network namespace is missing or could not be created."""


def netns_path(name: str) -> str:
    """Path of the bind mount that keeps a named namespace alive."""
    return os.path.join(NETNS_RUN_DIR, name)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or len(name) > 200:
        raise NetnsError(f"invalid netns name {name!r}: use 1-200 chars without '/'")


def exists(name: str) -> bool:
    """True when ``/run/netns/<name>`` is present (and therefore usable)."""
    return os.path.exists(netns_path(name))


def list_netns(prefix: str = "") -> list[str]:
    """Names of all named namespaces, optionally only those starting with ``prefix``."""
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def create(name: str) -> None:
    """Create a named netns; a no-op if it already exists (idempotent).

    A throwaway thread unshares its own network namespace and bind-mounts it (as `ip netns add`
    does), instead of pyroute2's forked helper: a fork while gRPC threads are busy (the agent's
    Observer serving the relay) leaves a child that can crash before it mounts anything.
    """
    _check_name(name)
    if exists(name):
        return
    box: dict[str, OSError] = {}

    def unshare_and_mount() -> None:
        try:
            if _libc_handle().unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            _pr_netns._create(name, None, "thread-self")  # mounts /proc/thread-self/ns/net
        except OSError as exc:
            box["error"] = exc

    t = threading.Thread(target=unshare_and_mount, name=f"netns-create-{name}", daemon=True)
    t.start()
    t.join()
    exc = box.get("error")
    if exc is not None and exc.errno != errno.EEXIST:
        with suppress(OSError):
            os.unlink(netns_path(name))  # a mount point left without a namespace behind it
        raise NetnsError(f"cannot create netns {name!r}: {exc}") from exc


def _libc_handle() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return _libc


def delete(name: str) -> None:
    """Remove a named netns; a no-op if it does not exist.

    Interfaces inside die with the namespace once no process holds it.
    A veth's peer in another namespace goes with it.
    """
    path = netns_path(name)
    if not os.path.exists(path):
        return
    try:
        _pr_netns.remove(name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # A stale, unmounted file left by a crash: just unlink it.
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            with suppress(FileNotFoundError):
                os.unlink(path)
        else:
            raise


def inode(name: str | None) -> int:
    """Inode of a namespace (``None`` = our own); compare with ``/proc/<pid>/ns/net``."""
    path = "/proc/self/ns/net" if name is None else netns_path(name)
    return os.stat(path).st_ino


@contextmanager
def iproute(name: str | None) -> Iterator[IPRoute]:
    """An ``IPRoute`` bound to netns ``name`` (``None`` = the caller's own).

    ``flags=0`` so that a typo never silently creates a fresh, empty netns
    (pyroute2's default is ``O_CREAT``).
    """
    if name is None:
        ipr = IPRoute()
    else:
        if not exists(name):
            raise NetnsError(f"netns {name!r} does not exist (expected {netns_path(name)})")
        ipr = IPRoute(netns=name, flags=0)
    try:
        yield ipr
    finally:
        ipr.close()


def _setns_current_thread(name: str) -> None:
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc_handle().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in netns ``name`` and return its result.

    setns(2) with CLONE_NEWNET changes only the calling thread, so the call
    runs on a throwaway thread: the caller's namespace is never touched and
    nothing has to be restored.  /proc/sys/net follows the thread's netns,
    which is what makes per-namespace sysctls work from here.
    """
    if not exists(name):
        raise NetnsError(f"netns {name!r} does not exist")
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            _setns_current_thread(name)
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed back to the caller below
            box["error"] = exc

    t = threading.Thread(target=runner, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _create_socket_threaded(
    netns: str | None = None,
    family: int = socket.AF_INET,
    socket_type: int = socket.SOCK_STREAM,
    proto: int = 0,
    fileno: int | None = None,
    flags: int = os.O_CREAT,
    libc: Any = None,
    timeout: Any = None,
) -> socket.socket:
    """pyroute2's `netns.create_socket` without its forked helper: the socket is made on a thread
    that entered the namespace (a socket stays in the namespace it was created in). Forking a
    process whose gRPC threads are busy can crash the child; a thread cannot."""
    if fileno is not None:
        return socket.socket(fileno=fileno)
    if netns is None:
        return socket.socket(family, socket_type, proto)
    name = os.path.basename(netns) if os.path.isabs(netns) else netns
    return call_in_netns(name, socket.socket, family, socket_type, proto)


_pr_netns.create_socket = _create_socket_threaded


def nsenter_argv(name: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside netns ``name`` without remounting /sys."""
    return ["nsenter", f"--net={netns_path(name)}", "--", *argv]


def run_in_netns(
    name: str,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 30,
    input: str | None = None,
    capture_output: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run an external command inside netns ``name`` and wait for it."""
    if not exists(name):
        raise NetnsError(f"netns {name!r} does not exist")
    return subprocess.run(
        nsenter_argv(name, argv),
        check=check,
        timeout=timeout,
        input=input,
        capture_output=capture_output,
        text=True,
    )
