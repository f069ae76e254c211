"""The agent's conntrack garbage collector removes exactly the entries whose lifetime has passed."""

from __future__ import annotations

import os
import random
import time

import numpy as np
import pytest

from tendril.agent.datapath import Datapath
from tendril.bpf import abi
from tendril.bpf.bpffs import remove_pins


@pytest.fixture()
def datapath():  # noqa: ANN201
    if os.geteuid() != 0:
        pytest.skip("needs root")
    node = "tgc" + "".join(random.choices("0123456789abcdef", k=5))
    dp = Datapath(node, ring_bytes=1 << 16)
    try:
        dp.load()
        yield dp
    finally:
        dp.close()
        remove_pins(node)


def _entry(sport: int, expires_in_s: float) -> tuple[np.void, np.void]:
    k = np.zeros((), dtype=abi.CT_KEY_DTYPE)
    k["ifindex"], k["sport"], k["dport"], k["proto"], k["ip_version"] = 7, sport, 80, 6, 4
    k["saddr"][:4] = [10, 244, 1, 2]
    k["daddr"][:4] = [10, 244, 1, 3]
    v = np.zeros((), dtype=abi.CT_VALUE_DTYPE)
    now = time.monotonic_ns()
    v["created_ns"] = v["last_seen_ns"] = now
    v["expires_ns"] = now + int(expires_in_s * 1e9)
    return k[()], v[()]


def test_gc_removes_only_expired(datapath: Datapath) -> None:
    for sport, ttl in ((1000, -5), (1001, -0.001), (1002, 30), (1003, 21600)):
        datapath.ct.update(*_entry(sport, ttl))
    assert datapath.gc_ct() == 2
    keys, _ = datapath.ct_entries()
    assert sorted(int(k["sport"]) for k in keys) == [1002, 1003]
    assert datapath.gc_ct() == 0
    assert datapath.flush_ct(ifindex=7) == 2
    assert len(datapath.ct_entries()[0]) == 0
