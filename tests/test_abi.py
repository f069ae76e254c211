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
        out[m.group(1)] = int(eval(m.group(2), {}))  # header values are int literals / shifts
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
]


def _python_value(name: str) -> int:
    if name in ("TND_CT_EGRESS", "TND_CT_INGRESS"):
        return abi.CtScope[name.removeprefix("TND_CT_")]
    if name.startswith("TND_CT_LIFETIME_"):
        return getattr(abi, name.removeprefix("TND_"))
    if name.startswith("TND_CT_"):
        return abi.CtState[name.removeprefix("TND_CT_")]
    if name in ("TND_METRICS_ENTRIES", "TND_SETTINGS_SOURCE_IP_CHECK"):
        return getattr(abi, name.removeprefix("TND_"))
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
    for prefix, enum in _PREFIXES:
        for member in enum:  # type: ignore[attr-defined]
            assert f"{prefix}{member.name}" in defs, f"{enum.__name__}.{member.name} not in header"


def test_names_and_dtypes():
    assert abi.MAP_NAMES == {
        "events": "tnd_events",
        "lost": "tnd_lost",
        "ct": "tnd_ct",
        "metrics": "tnd_metrics",
        "endpoints": "tnd_endpoints",
        "settings": "tnd_settings",
    }
    assert abi.PROGRAM_NAMES == ("tnd_from_container", "tnd_to_container")
    assert abi.metrics_index(abi.DropReason.POLICY_DENIED, abi.MetricDirection.EGRESS) == 133 * 4 + 2
    # ring buffer record for the event: 8-byte header + payload, already 8-aligned
    assert (abi.EVENT_DTYPE.itemsize + 8) % 8 == 0
