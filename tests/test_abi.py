"""tendril.bpf.abi must match bpf/include/tendril_abi.h exactly.

Structs are checked through BTF: a tiny C file including the header declares one global of each
struct, clang-19 compiles it with -g, and ``bpftool -j btf dump`` gives every member's offset and
size. Constants are checked by parsing the header's #defines. Any drift fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tendril.bpf import abi

HEADER = Path(__file__).resolve().parents[1] / "bpf" / "include" / "tendril_abi.h"

pytestmark = pytest.mark.skipif(
    shutil.which("clang-19") is None or shutil.which("bpftool") is None, reason="needs clang-19 and bpftool"
)


@pytest.fixture(scope="module")
def btf_types(tmp_path_factory) -> dict[int, dict]:
    d = tmp_path_factory.mktemp("abi")
    src = d / "abi_btf.c"
    src.write_text(
        '#include <linux/types.h>\n#include "tendril_abi.h"\n'
        + "".join(f"struct {name} g_{name};\n" for name in abi.C_STRUCTS)
    )
    obj = d / "abi_btf.o"
    subprocess.run(
        ["clang-19", "-target", "bpf", "-g", "-O2", "-I/usr/include/x86_64-linux-gnu"]
        + ["-I", str(HEADER.parent), "-c", str(src), "-o", str(obj)],
        check=True,
    )
    out = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", str(obj)], check=True, capture_output=True, text=True
    ).stdout
    return {t["id"]: t for t in json.loads(out)["types"]}


def _resolve(types: dict[int, dict], tid: int) -> tuple[int, str, tuple[int, ...]]:
    """(size, kind, array shape) of a BTF type, through typedefs and qualifiers."""
    t = types[tid]
    while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT"):
        t = types[t["type_id"]]
    if t["kind"] == "ARRAY":
        size, kind, shape = _resolve(types, t["type_id"])
        return size * t["nr_elems"], kind, (t["nr_elems"], *shape)
    return t["size"], t["kind"], ()


def _struct(types: dict[int, dict], name: str) -> dict:
    for t in types.values():
        if t["kind"] == "STRUCT" and t.get("name") == name:
            return t
    raise KeyError(name)


@pytest.mark.parametrize("cname", sorted(abi.C_STRUCTS))
def test_struct_matches_btf(btf_types, cname):
    dt: np.dtype = abi.C_STRUCTS[cname]
    st = _struct(btf_types, cname)
    assert dt.itemsize == st["size"], f"{cname}: sizeof {st['size']} vs dtype {dt.itemsize}"
    c_names = [m["name"] for m in st["members"]]
    assert list(dt.names) == c_names, f"{cname}: member names/order differ"
    for m in st["members"]:
        assert m["bits_offset"] % 8 == 0, f"{cname}.{m['name']}: bitfields are not supported"
        size, kind, shape = _resolve(btf_types, m["type_id"])
        fdt, off = dt.fields[m["name"]][:2]
        assert off == m["bits_offset"] // 8, f"{cname}.{m['name']}: offset {m['bits_offset'] // 8} vs {off}"
        assert fdt.itemsize == size, f"{cname}.{m['name']}: size {size} vs {fdt.itemsize}"
        assert fdt.shape == shape, f"{cname}.{m['name']}: shape {shape} vs {fdt.shape}"
        assert kind == "INT" and fdt.base.kind == "u", f"{cname}.{m['name']}: expected unsigned ints"


def _defines() -> dict[str, int]:
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    out = {}
    for m in re.finditer(r"^#define\s+(TND_\w+)\s+(.+?)\s*$", text, flags=re.M):
        expr = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uU]?[lL]*\b", r"\1", m.group(2))  # 1U, 0xFFU
        out[m.group(1)] = int(eval(expr, {}))  # header values are int literals / shifts
    return out


# Longest prefix first: TND_TRACE_LEVEL_ before TND_TRACE_, TND_CT_LIFETIME_ before TND_CT_.
_PREFIXES: list[tuple[str, object]] = [
    ("TND_EVENT_", abi.EventType),
    ("TND_TRACE_LEVEL_", abi.TraceLevel),
    ("TND_TRACE_", abi.TracePoint),
    ("TND_DROP_", abi.DropReason),
    ("TND_CTF_", abi.CtFlags),
    ("TND_METRIC_", abi.MetricDirection),
    ("TND_EVF_", abi.EventFlags),
    ("TND_TCP_", abi.TcpFlags),
    ("TND_ID_", abi.Identity),
    ("TND_MATCH_", abi.MatchType),
    ("TND_SETTINGS_", abi.SettingsFlags),
    ("TND_XLATE_", abi.SockXlatePoint),
    ("TND_SVC_", abi.ServiceFlags),
    ("TND_BACKEND_", abi.BackendState),
    ("TND_LB_AFF_", abi.LbAffinityFlags),
    ("TND_LB_NAT_", abi.LbNatDir),
]

# #defines mirrored as module-level constants of tendril.bpf.abi (name without TND_).
_MODULE_CONSTANTS = {
    "TND_METRICS_ENTRIES",
    "TND_POLICY_MAX_ENTRIES",
    "TND_POLICY_ENDPOINTS",
    "TND_IPCACHE_MAX_ENTRIES",
    "TND_LB_SERVICES_MAX",
    "TND_LB_BACKENDS_MAX",
    "TND_LB_AFFINITY_MAX",
    "TND_LB_SOCK_REVNAT_MAX",
    "TND_LB_NAT_MAX",
    "TND_LB_SNAT_MAX",
    "TND_LB_SNAT_PORT_MIN",
    "TND_LB_SNAT_PORT_MAX",
    "TND_LB_SNAT_RETRIES",
    "TND_LB_SNAT_STALE_S",
    "TND_LB_CGROUPS_MAX",
    "TND_MAGLEV_DEFAULT_M",
    "TND_VXLAN_PORT",
    "TND_OVERLAY_MAC",
    "TND_MARK_MAGIC_MASK",
    "TND_MARK_MAGIC_IDENTITY",
    "TND_MARK_IDENTITY_SHIFT",
    "TND_MARK_MAGIC_TO_PROXY",
    "TND_MARK_MAGIC_FROM_PROXY",
    "TND_PROXY_ROUTE_TABLE",
    "TND_EPF_HTTP_VISIBILITY",
    "TND_SNAP_LEN",
}


def _python_value(name: str) -> int:
    if name in ("TND_CT_EGRESS", "TND_CT_INGRESS"):
        return abi.CtScope[name.removeprefix("TND_CT_")]
    if name.startswith("TND_CT_LIFETIME_"):
        return getattr(abi, name.removeprefix("TND_"))
    if name.startswith("TND_CT_"):
        return abi.CtState[name.removeprefix("TND_CT_")]
    if name in _MODULE_CONSTANTS:
        return getattr(abi, name.removeprefix("TND_"))
    if name == "TND_POLICY_DENY":
        return abi.PolicyFlags.DENY
    for prefix, enum in _PREFIXES:
        if name.startswith(prefix):
            return enum[name.removeprefix(prefix)]  # type: ignore[index]
    raise KeyError(f"{name}: no Python mirror in tendril.bpf.abi")


def test_constants_match_header():
    defs = _defines()
    assert len(defs) > 40
    for name, value in defs.items():
        if name == "TENDRIL_ABI_H":
            continue
        assert int(_python_value(name)) == value, name


def test_enums_have_no_extra_members():
    defs = _defines()
    for prefix, enum in [*_PREFIXES, ("TND_POLICY_", abi.PolicyFlags)]:
        for member in enum:  # type: ignore[attr-defined]
            assert f"{prefix}{member.name}" in defs, f"{enum.__name__}.{member.name} not in header"
    assert defs["TND_SETTINGS_SOURCE_IP_CHECK"] == abi.SETTINGS_SOURCE_IP_CHECK
    assert defs["TND_SETTINGS_POLICY_AUDIT"] == abi.SETTINGS_POLICY_AUDIT


def test_names_and_dtypes():
    assert abi.MAP_NAMES == {
        "events": "tnd_events",
        "lost": "tnd_lost",
        "payloads": "tnd_payloads",
        "payloads_lost": "tnd_payloads_lost",
        "ct": "tnd_ct",
        "metrics": "tnd_metrics",
        "endpoints": "tnd_endpoints",
        "settings": "tnd_settings",
        "ipcache": "tnd_ipcache",
        "policy": "tnd_policy",
        "lb_services": "tnd_lb_services",
        "lb_backends": "tnd_lb_backends",
        "lb_revnat": "tnd_lb_revnat",
        "lb_maglev": "tnd_lb_maglev",
        "lb_affinity": "tnd_lb_affinity",
        "lb_sock_revnat": "tnd_lb_sock_revnat",
        "lb_nat": "tnd_lb_nat",
        "lb_snat": "tnd_lb_snat",
        "lb_cgroups": "tnd_lb_cgroups",
    }
    assert abi.MAP_IPCACHE == "tnd_ipcache" and abi.MAP_POLICY == "tnd_policy"
    assert abi.PROGRAM_NAMES == ("tnd_from_container", "tnd_to_container")
    assert abi.metrics_index(abi.DropReason.POLICY_DENIED, abi.MetricDirection.EGRESS) == 133 * 4 + 2
    # ring buffer record for the event: 8-byte header + payload, already 8-aligned
    assert (abi.EVENT_DTYPE.itemsize + 8) % 8 == 0
    assert (abi.PAYLOAD_DTYPE.itemsize + 8) % 8 == 0


def test_new_struct_fields_and_byte_order():
    # the fields the agent writes/reads by name
    assert "remote_id" in abi.EVENT_DTYPE.names and "pad0" not in abi.EVENT_DTYPE.names
    assert "identity" in abi.ENDPOINT_INFO_DTYPE.names
    # policy ports are network order in the key (their prefix bits come first), so the LPM trie
    # matches port ranges by their leading bits
    k = abi.policy_key(300, True, 6, 0x1F90)
    assert k.tobytes() == (64).to_bytes(4, "little") + (300).to_bytes(4, "little") + bytes([1, 6, 0x1F, 0x90])
    assert abi.policy_value(abi.MatchType.L4_ONLY, proxy_port=0x1234).tobytes()[2:4] == b"\x12\x34"


def test_ipcache_key_builder():
    k = abi.ipcache_key("10.96.7.1/12")
    assert k["prefixlen"] == 32 + 12 and k["family"] == 4
    assert bytes(k["addr"]) == bytes([10, 96, 0, 0]) + bytes(12)  # host bits cleared
    assert bytes(k["pad"]) == bytes(3)
    k6 = abi.ipcache_key("fd00::1")
    assert k6["prefixlen"] == 32 + 128 and k6["family"] == 6
    assert bytes(k6["addr"]) == bytes.fromhex("fd00" + "00" * 13 + "01")
    assert abi.ipcache_key("10.0.0.1")["prefixlen"] == 64


def _covered(keys) -> set[int]:
    ports: set[int] = set()
    for k in keys:
        bits = int(k["prefixlen"]) - abi.POLICY_PREFIX_PROTO
        size = 1 << (16 - bits)
        assert int(k["dport"]) % size == 0
        ports.update(range(int(k["dport"]), int(k["dport"]) + size))
    return ports


@pytest.mark.parametrize(
    ("lo", "hi", "n"),
    [(80, 0, 1), (80, 80, 1), (8080, 8083, 1), (1, 3, 2), (1024, 65535, 6), (1, 65535, 16), (65535, 0, 1)],
)
def test_port_range_prefixes(lo, hi, n):
    keys = abi.policy_entries_for_port_range(400, False, 17, lo, hi)
    assert len(keys) == n
    assert _covered(keys) == set(range(lo, (hi or lo) + 1))
    assert all(k["identity"] == 400 and k["egress"] == 0 and k["proto"] == 17 for k in keys)


def test_port_range_random_exact_cover():
    rng = np.random.default_rng(7)
    for _ in range(300):
        lo, hi = sorted(int(x) for x in rng.integers(1, 65536, 2))
        keys = abi.policy_entries_for_port_range(1, True, 6, lo, hi)
        assert _covered(keys) == set(range(lo, hi + 1))
        assert len(keys) <= 30  # at most 2 * 15 blocks for a 16-bit range


def test_policy_entries_any_protocol_and_any_port():
    (k,) = abi.policy_entries_for_port_range(500, True, 0)
    assert (k["prefixlen"], k["proto"], k["dport"]) == (40, 0, 0)
    for hi in (0, 65535):
        (k,) = abi.policy_entries_for_port_range(500, True, 6, 0, hi)
        assert (k["prefixlen"], k["proto"], k["dport"]) == (48, 6, 0)
    with pytest.raises(ValueError):
        abi.policy_entries_for_port_range(500, True, 0, 80)
    with pytest.raises(ValueError):
        abi.policy_entries_for_port_range(500, True, 6, 90, 80)
    m = abi.policy_enforced_key(False)
    assert (m["identity"], m["egress"], m["prefixlen"]) == (0xFFFFFFFF, 0, 64)


def test_lb_builders_and_byte_order():
    # ports are network order in every LB struct (as the socket hooks and packets carry them)
    k = abi.lb_key("10.96.0.10", 80, 6, slot=2)
    vip = bytes([10, 96, 0, 10]) + bytes(12)
    assert k.tobytes() == vip + b"\x00\x50" + bytes([6, 4]) + b"\x02\x00" + bytes(2)
    w = abi.lb_key(None, 30080, 17, family=6)  # NodePort wildcard
    assert bytes(w["addr"]) == bytes(16) and w["family"] == 6 and w["port"] == 30080
    k6 = abi.lb_key("fd00:10:96::a", 53, 17)
    assert k6["family"] == 6 and bytes(k6["addr"]) == bytes.fromhex("fd00001000960000000000000000000a")
    m = abi.lb_master(3, 7, abi.ServiceFlags.NODEPORT | abi.ServiceFlags.MAGLEV, 10800)
    assert (m["count"], m["rev_nat_id"], m["flags"], m["affinity_timeout_s"]) == (3, 7, 0b1010, 10800)
    assert abi.lb_slot(42)["backend_id"] == 42
    b = abi.lb_backend("fd00::5", 8080, 6, abi.BackendState.TERMINATING)
    assert b.tobytes()[16:21] == b"\x1f\x90" + bytes([6, 6, 1])
    nk = abi.lb_nat_key("198.18.0.9", "10.0.1.5", 40000, 30080, 6, abi.LbNatDir.FWD)
    assert nk.tobytes()[32:] == (40000).to_bytes(2, "big") + (30080).to_bytes(2, "big") + bytes([6, 4, 1, 0])
    assert abi.lb_cgroup(77).tobytes() == (77).to_bytes(2, "little") + bytes(6)
    assert abi.lb_revnat("10.96.0.10", 80).tobytes() == vip + b"\x00\x50\x04\x00"


def test_lb_sock_program_attach_types():
    from tendril.bpf import AttachType

    expected = {
        "tnd_sock4_connect": AttachType.CGROUP_INET4_CONNECT,
        "tnd_sock6_connect": AttachType.CGROUP_INET6_CONNECT,
        "tnd_sock4_sendmsg": AttachType.CGROUP_UDP4_SENDMSG,
        "tnd_sock6_sendmsg": AttachType.CGROUP_UDP6_SENDMSG,
        "tnd_sock4_recvmsg": AttachType.CGROUP_UDP4_RECVMSG,
        "tnd_sock6_recvmsg": AttachType.CGROUP_UDP6_RECVMSG,
        "tnd_sock4_getpeername": AttachType.CGROUP_INET4_GETPEERNAME,
        "tnd_sock6_getpeername": AttachType.CGROUP_INET6_GETPEERNAME,
    }
    assert {k: int(v) for k, v in expected.items()} == abi.SOCK_PROGRAMS
    assert abi.PROG_FROM_NETDEV == "tnd_from_netdev"
