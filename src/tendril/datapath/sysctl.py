"""Per-network-namespace sysctls.

Forwarding, rp_filter and DAD settings are per netns; /proc/sys/net shows
the values of the namespace of the thread that opens it, so the reads and
writes run on a thread that has joined the namespace (see
``netns.call_in_netns``).  ``netns=None`` means the caller's own namespace
and is meant for reading only: the lab never changes root-namespace sysctls.
"""

from __future__ import annotations

from collections.abc import Mapping

from tendril.datapath import netns as _netns


def _path(key: str) -> str:
    """``net.ipv4.ip_forward`` -> ``/proc/sys/net/ipv4/ip_forward``.

    Interface names may contain dots, so callers can also pass a path
    already split with slashes (``net/ipv6/conf/eth0.1/accept_dad``).
    """
    rel = key if "/" in key else key.replace(".", "/")
    return "/proc/sys/" + rel.lstrip("/")


def _read(key: str) -> str:
    with open(_path(key)) as f:
        return f.read().strip()


def _write_many(values: Mapping[str, str | int]) -> None:
    for key, value in values.items():
        with open(_path(key), "w") as f:
            f.write(str(value))


def get(netns: str | None, key: str) -> str:
    """Read sysctl ``key`` in namespace ``netns`` (``None`` = own namespace)."""
    if netns is None:
        return _read(key)
    return _netns.call_in_netns(netns, _read, key)


def set_many(netns: str, values: Mapping[str, str | int]) -> None:
    """Write several sysctls in one trip into ``netns`` (one thread, one setns)."""
    if netns is None:
        raise ValueError("refusing to write sysctls in the caller's (root) namespace")
    _netns.call_in_netns(netns, _write_many, dict(values))


def set(netns: str, key: str, value: str | int) -> None:  # noqa: A001 - mirrors `sysctl -w`
    """Write one sysctl in ``netns``."""
    set_many(netns, {key: value})


def iface_key(family: str, ifname: str, leaf: str) -> str:
    """Slash form of a per-interface key, safe for names containing dots."""
    return f"net/{family}/conf/{ifname}/{leaf}"
