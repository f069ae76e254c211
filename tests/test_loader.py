"""Loader tests against the real kernel: compile small BPF programs, load, run, attach, drain.

Needs root, clang-19 and bpffs (mounted here if missing). Every kernel object is created under a
unique ``tndtest-<random>`` name (netns, veths, /sys/fs/bpf/tndtest-<random>/) and removed at the end.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tendril.bpf import (
    AttachType,
    BpfError,
    BpfObject,
    Link,
    LoadError,
    Map,
    MissingPrivilegeError,
    RingBufferReader,
    TypedMap,
    attach_cgroup,
    attach_tc,
    create_map,
    test_run,
)
from tendril.bpf import libbpf as lb
from tendril.bpf.bpffs import ensure_bpffs, is_bpffs, pin_dir, remove_pins

CLANG = "clang-19"
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which(CLANG) is None, reason="needs clang-19"),
]

PROG_C = r"""
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct rec { __u64 seq; __u32 len; __u32 cpu; __u64 tag; __u64 pad; };   /* 32 bytes */
struct kk { __u32 a; __u16 b; __u16 c; };
struct vv { __u64 x; __u32 y; __u32 z; };

struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); } pkt_count SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); } count2 SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64);
         __uint(pinning, LIBBPF_PIN_BY_NAME); } persist SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 16384);
         __uint(pinning, LIBBPF_PIN_BY_NAME); } events SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); __uint(pinning, LIBBPF_PIN_BY_NAME); } lost SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1024);
         __type(key, struct kk); __type(value, struct vv); } hashm SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 64);
         __type(key, __u32); __type(value, struct vv); } pchash SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u32); } verdict SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u32); } discard_odd SEC(".maps");

static __always_inline int emit(struct __sk_buff *skb, __u64 tag)
{
	__u32 k = 0;
	__u64 *c = bpf_map_lookup_elem(&pkt_count, &k);
	if (c)
		(*c)++;
	__u64 seq = 0;
	__u64 *p = bpf_map_lookup_elem(&persist, &k);
	if (p)
		seq = __sync_fetch_and_add(p, 1);
	struct rec *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		__u64 *l = bpf_map_lookup_elem(&lost, &k);
		if (l)
			(*l)++;
	} else {
		r->seq = seq;
		r->len = skb->len;
		r->cpu = bpf_get_smp_processor_id();
		r->tag = tag;
		r->pad = 0;
		__u32 *d = bpf_map_lookup_elem(&discard_odd, &k);
		if (d && *d && (seq & 1))
			bpf_ringbuf_discard(r, 0);
		else
			bpf_ringbuf_submit(r, 0);
	}
	__u32 *v = bpf_map_lookup_elem(&verdict, &k);
	return v ? (int)*v : TC_ACT_OK;
}

SEC("tc")
int count_pkts(struct __sk_buff *skb)
{
	return emit(skb, 1);
}

SEC("tc")
int count_pkts2(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u64 *c = bpf_map_lookup_elem(&count2, &k);
	if (c)
		(*c)++;
	return TC_ACT_OK;
}

SEC("tc")
int rewrite(struct __sk_buff *skb)
{
	__u8 b = 0xab;
	bpf_skb_store_bytes(skb, 0, &b, 1, 0);
	return TC_ACT_SHOT;
}

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); } connects SEC(".maps");

SEC("cgroup/connect4")
int count_connect4(struct bpf_sock_addr *ctx)
{
	__u32 k = 0;
	__u64 *c = bpf_map_lookup_elem(&connects, &k);
	if (c)
		__sync_fetch_and_add(c, 1);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
"""

BAD_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); } m SEC(".maps");
SEC("tc")
int bad_prog(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&m, &k);
	return *v;   /* no NULL check: the verifier must refuse */
}
char LICENSE[] SEC("license") = "GPL";
"""

REC_DTYPE = np.dtype([("seq", "u8"), ("len", "u4"), ("cpu", "u4"), ("tag", "u8"), ("pad", "u8")])
KK = np.dtype([("a", "u4"), ("b", "u2"), ("c", "u2")])
VV = np.dtype([("x", "u8"), ("y", "u4"), ("z", "u4")])
U32, U64 = np.dtype("u4"), np.dtype("u8")

# 14-byte Ethernet header + IPv4/UDP, enough for a tc program under BPF_PROG_TEST_RUN.
PKT = bytes(6) + bytes.fromhex("020000000001") + b"\x08\x00" + bytes(20) + bytes(8) + b"payload!"


def compile_bpf(src: str, out: Path) -> Path:
    c = out.with_suffix(".c")
    c.write_text(src)
    subprocess.run(
        [CLANG, "-target", "bpf", "-D__TARGET_ARCH_x86", "-O2", "-g", "-Wall", "-Werror"]
        + ["-I/usr/include/x86_64-linux-gnu", "-c", str(c), "-o", str(out)],
        check=True,
    )
    return out


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def objs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bpfobj")
    os.chmod(d, 0o755)
    return {"prog": compile_bpf(PROG_C, d / "prog.o"), "bad": compile_bpf(BAD_C, d / "bad.o")}


@pytest.fixture(scope="module")
def bpffs_root():
    ensure_bpffs()
    root = Path("/sys/fs/bpf") / f"tndtest-{secrets.token_hex(4)}"
    root.mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        assert not root.exists()


@pytest.fixture
def pin_root(bpffs_root, request) -> Path:
    d = bpffs_root / request.node.name.replace("[", "_").replace("]", "")
    d.mkdir()
    return d


@pytest.fixture
def loaded(objs, pin_root):
    obj = BpfObject.open(objs["prog"], pin_root=pin_root)
    obj.load()
    try:
        yield obj
    finally:
        obj.close()


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


@pytest.fixture
def vethns():
    """A netns ``tndtest-<rand>`` with a veth: host side 10.231.x.1, namespace side .2."""
    tag = secrets.token_hex(3)
    ns, host, peer = f"tndtest-{tag}", f"tnd{tag}h", f"tnd{tag}p"
    octet = int(tag[:2], 16)
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns)
        _ip("addr", "add", f"10.231.{octet}.1/24", "dev", host)
        _ip("link", "set", host, "up")
        _ip("-n", ns, "addr", "add", f"10.231.{octet}.2/24", "dev", peer)
        _ip("-n", ns, "link", "set", peer, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield {
            "ns": ns,
            "host": host,
            "ifindex": socket.if_nametoindex(host),
            "host_ip": f"10.231.{octet}.1",
            "ns_ip": f"10.231.{octet}.2",
        }
    finally:
        _ip("link", "del", host, check=False)
        _ip("netns", "del", ns, check=False)


def send_udp(env: dict, n: int) -> None:
    """Send n UDP datagrams from inside the netns to the host side (crosses host veth ingress)."""
    code = (
        "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"for i in range({n}): s.sendto(b'x'*32, ('{env['host_ip']}', 9))"
    )
    subprocess.run(["nsenter", f"--net=/run/netns/{env['ns']}", PY, "-c", code], check=True, timeout=30)
    time.sleep(0.05)


def percpu_sum(m: Map, key: int = 0) -> int:
    return int(TypedMap(m, U32, U64).sum_percpu(key))


# ---- load / errors / test_run -------------------------------------------------------------------


def test_load_programs_and_maps(loaded):
    p = loaded.program("count_pkts")
    assert p.fd > 0 and p.name == "count_pkts"
    assert set(loaded.program_names()) >= {"count_pkts", "count_pkts2", "rewrite"}
    m = loaded.map("hashm")
    assert (m.key_size, m.value_size, m.max_entries, m.map_type) == (8, 16, 1024, lb.BPF_MAP_TYPE_HASH)
    with pytest.raises(KeyError):
        loaded.program("nope")


def test_test_run_retval_and_data(loaded):
    res = test_run(loaded.program("rewrite"), PKT)
    assert res.retval == 2  # TC_ACT_SHOT
    assert res.data_out[0] == 0xAB and res.data_out[1:] == PKT[1:]
    TypedMap(loaded.map("verdict"), U32, U32).update(0, 7)
    res = test_run(loaded.program("count_pkts"), PKT, repeat=10)
    assert res.retval == 7 and res.duration_ns >= 0


def test_verifier_failure_carries_log(objs):
    obj = BpfObject.open(objs["bad"])
    try:
        with pytest.raises(LoadError) as ei:
            obj.load()
    finally:
        obj.close()
    msg = str(ei.value)
    assert str(objs["bad"]) in msg and "bad_prog" in msg
    assert "invalid mem access" in msg or "map_value_or_null" in msg, msg
    assert ei.value.errno > 0


def test_open_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        BpfObject.open(tmp_path / "nope.o")


def test_map_sizes_override(objs, pin_root):
    with BpfObject.open(objs["prog"], pin_root=pin_root, map_sizes={"hashm": 77}) as obj:
        obj.load()
        assert obj.map("hashm").max_entries == 77


def test_unprivileged_gets_one_line_error(objs):
    d = Path(tempfile.mkdtemp(prefix="tndtest-"))
    try:
        os.chmod(d, 0o755)
        obj = shutil.copy(objs["prog"], d / "prog.o")
        os.chmod(obj, 0o644)
        code = f"from tendril.bpf import BpfObject\no = BpfObject.open({str(obj)!r}); o.load()"
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
            + [PY, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
        )
    finally:
        shutil.rmtree(d)
    assert r.returncode != 0
    assert "MissingPrivilegeError: tendril needs root (CAP_BPF, CAP_NET_ADMIN)" in r.stderr, r.stderr


# ---- maps ---------------------------------------------------------------------------------------


def test_typed_hash_ops(loaded):
    tm = TypedMap(loaded.map("hashm"), KK, VV)
    k = np.array((1, 2, 3), KK)[()]
    assert tm.lookup(k) is None
    tm.update(k, np.array((10, 20, 30), VV)[()])
    v = tm.lookup(k)
    assert isinstance(v, np.void) and (int(v["x"]), int(v["y"]), int(v["z"])) == (10, 20, 30)
    # bytes in, raw Map access
    tm.update(np.array((2, 0, 0), KK).tobytes(), np.array((5, 0, 0), VV).tobytes())
    assert loaded.map("hashm").lookup(np.array((2, 0, 0), KK).tobytes())[:8] == struct.pack("<Q", 5)
    for i in range(100, 400):
        tm.update(np.array((i, 1, 1), KK), np.array((i * 2, 0, 0), VV))
    keys, vals = tm.to_arrays()
    assert len(keys) == 302 and len(vals) == 302
    assert (vals["x"][keys["a"] >= 100] == keys["a"][keys["a"] >= 100] * 2).all()
    items = dict((int(k["a"]), int(v["x"])) for k, v in tm.items())
    assert items[1] == 10 and items[399] == 798 and len(items) == 302
    assert sorted(loaded.map("hashm").keys()) == sorted(keys.tobytes()[i * 8 : i * 8 + 8] for i in range(302))
    assert tm.delete(k) is True and tm.delete(k) is False
    assert tm.lookup(k) is None
    with pytest.raises(ValueError):
        TypedMap(loaded.map("hashm"), U32, VV)


def test_map_dump_without_batch(loaded):
    m = loaded.map("hashm")
    tm = TypedMap(m, KK, VV)
    for i in range(10):
        tm.update(np.array((i, 0, 0), KK), np.array((i, 0, 0), VV))
    m._batch_ok = False  # force the get_next_key path
    keys, vals = tm.to_arrays()
    assert sorted(keys["a"].tolist()) == list(range(10)) and (keys["a"] == vals["x"]).all()


def test_percpu_counters(loaded):
    ncpu = lb.num_possible_cpus()
    test_run(loaded.program("count_pkts"), PKT, repeat=25)
    tm = TypedMap(loaded.map("pkt_count"), U32, U64)
    per = tm.lookup(0)
    assert per.shape == (ncpu,) and int(per.sum()) == 25
    assert int(tm.sum_percpu(0)) == 25
    # struct values per CPU (value 16 B, stride 16) and broadcast updates
    pm = TypedMap(loaded.map("pchash"), U32, VV)
    pm.update(7, np.array((3, 1, 2), VV))
    vals = pm.lookup(7)
    assert vals.shape == (ncpu,) and (vals["x"] == 3).all()
    s = pm.sum_percpu(7)
    assert int(s["x"]) == 3 * ncpu and int(s["z"]) == 2 * ncpu
    arr = np.zeros(ncpu, VV)
    arr["x"] = np.arange(ncpu)
    pm.update(8, arr)
    keys, values = pm.to_arrays()
    assert values.shape == (2, ncpu)
    row = values[list(keys).index(8)]
    assert row["x"].tolist() == list(range(ncpu))


def test_map_pin_and_open_pinned(loaded, pin_root):
    m = loaded.map("hashm")
    m.pin(pin_root / "sub" / "hashm")
    TypedMap(m, KK, VV).update(np.array((9, 9, 9), KK), np.array((1, 2, 3), VV))
    with Map.open_pinned(pin_root / "sub" / "hashm") as m2:
        assert m2.name == "hashm" and m2.id == m.id
        assert int(TypedMap(m2, KK, VV).lookup(np.array((9, 9, 9), KK))["z"]) == 3


def test_pinned_maps_reused_across_loads(objs, pin_root):
    with BpfObject.open(objs["prog"], pin_root=pin_root) as o1:
        o1.load()
        test_run(o1.program("count_pkts"), PKT, repeat=5)
        first_id = o1.map("persist").id
    assert (pin_root / "persist").exists() and (pin_root / "events").exists()
    with BpfObject.open(objs["prog"], pin_root=pin_root) as o2:
        o2.load()
        assert o2.map("persist").id == first_id
        test_run(o2.program("count_pkts"), PKT, repeat=3)
        assert int(TypedMap(o2.map("persist"), U32, U64).lookup(0)) == 8
        assert o2.map("hashm").id != 0  # unpinned maps are fresh


# ---- maps created from Python, map-in-map --------------------------------------------------------

LPM_KEY = np.dtype({"names": ["prefixlen", "addr"], "formats": ["<u4", ("u1", 4)], "itemsize": 8})


def _lpm_key(cidr: str) -> np.void:
    net = ipaddress.ip_network(cidr)
    k = np.zeros((), LPM_KEY)
    k["prefixlen"] = net.prefixlen
    k["addr"] = np.frombuffer(net.network_address.packed, np.uint8)
    return k[()]


def test_create_map_lpm_trie():
    with create_map(lb.BPF_MAP_TYPE_LPM_TRIE, 8, 4, 64, flags=lb.BPF_F_NO_PREALLOC, name="tnd_t.lpm") as m:
        assert (m.map_type, m.key_size, m.value_size, m.max_entries) == (lb.BPF_MAP_TYPE_LPM_TRIE, 8, 4, 64)
        assert m.map_flags == lb.BPF_F_NO_PREALLOC and m.name == "tnd_t.lpm" and m.id > 0
        t = TypedMap(m, LPM_KEY, U32)
        t.update(_lpm_key("10.0.0.0/8"), np.uint32(1))
        t.update(_lpm_key("10.96.0.0/12"), np.uint32(2))
        # a lookup with a full-length key returns the longest matching prefix, as in BPF
        assert int(t.lookup(_lpm_key("10.97.1.1/32"))) == 2
        assert int(t.lookup(_lpm_key("10.1.1.1/32"))) == 1
        assert t.lookup(_lpm_key("11.1.1.1/32")) is None
        assert len(t) == 2
    assert m.fd == -1


def test_create_map_errors():
    with pytest.raises(ValueError, match="at most 15"):
        create_map(lb.BPF_MAP_TYPE_HASH, 4, 4, 8, name="much-too-long-name")
    with pytest.raises(BpfError) as ei:  # LPM tries must not be preallocated
        create_map(lb.BPF_MAP_TYPE_LPM_TRIE, 8, 4, 8)
    assert ei.value.errno == errno.EINVAL and "bpf_map_create" in str(ei.value)
    with create_map(lb.BPF_MAP_TYPE_HASH, 4, 4, 8) as plain, pytest.raises(TypeError):
        plain.inner_map(0)


def test_array_of_maps_swap_and_inner_map(pin_root):
    shape = dict(map_type=lb.BPF_MAP_TYPE_LPM_TRIE, key_size=8, value_size=4, max_entries=16)
    with (
        create_map(**shape, flags=lb.BPF_F_NO_PREALLOC) as template,
        create_map(lb.BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, 8, name="outer", inner_map_fd=template.fd) as outer,
    ):
        assert outer.inner_map(3) is None  # empty slot
        a = create_map(**shape, flags=lb.BPF_F_NO_PREALLOC)
        b = create_map(**shape, flags=lb.BPF_F_NO_PREALLOC)
        TypedMap(a, LPM_KEY, U32).update(_lpm_key("10.0.0.0/8"), np.uint32(7))
        outer.set_inner(3, a)
        a_id = a.id
        a.close()  # the outer map keeps it alive
        with outer.inner_map(3) as got:
            assert got.id == a_id and int(TypedMap(got, LPM_KEY, U32).lookup(_lpm_key("10.1.2.3/32"))) == 7
        outer.set_inner(3, b.fd)  # an fd works too; the swap is one update
        with outer.inner_map(3) as got:
            assert got.id == b.id
        with Map.open_by_id(b.id) as by_id:
            assert by_id.map_type == lb.BPF_MAP_TYPE_LPM_TRIE and by_id.fd != b.fd
        assert Map.open_by_id(0x7FFFFFF0) is None
        # a map of another shape is refused by the kernel
        with create_map(lb.BPF_MAP_TYPE_HASH, 8, 4, 16) as wrong, pytest.raises(BpfError):
            outer.set_inner(4, wrong)
        # pinned outer maps reopen with their inner maps
        outer.pin(pin_root / "outer")
        with Map.open_pinned(pin_root / "outer") as again, again.inner_map(3) as got:
            assert got.id == b.id
        assert outer.delete((3).to_bytes(4, "little"))
        assert outer.inner_map(3) is None
        b.close()


# ---- ring buffer --------------------------------------------------------------------------------


def test_ringbuf_drain_exact(loaded):
    rb = RingBufferReader(loaded.map("events"), REC_DTYPE)
    try:
        assert rb.pending_bytes() == 0 and len(rb.drain()) == 0
        test_run(loaded.program("count_pkts"), PKT, repeat=100)
        assert rb.pending_bytes() == 100 * 40
        assert rb.poll(0) is True
        recs = rb.drain()
        assert recs.dtype == REC_DTYPE and len(recs) == 100
        assert recs["seq"].tolist() == list(range(100))
        assert (recs["len"] == len(PKT)).all() and (recs["tag"] == 1).all()
        assert rb.pending_bytes() == 0 and rb.consumer_pos == 4000
        assert rb.poll(10) is False
    finally:
        rb.close()


def test_ringbuf_wraparound_and_limits(loaded):
    rb = RingBufferReader(loaded.map("events"), REC_DTYPE)
    prog = loaded.program("count_pkts")
    try:
        cap = rb.capacity_records  # 16384 // 40 = 409
        seqs: list[int] = []
        for _ in range(8):  # 8 * 300 records through a 409-record ring: wraps several times
            test_run(prog, PKT, repeat=300)
            part = rb.drain(max_records=120)
            assert len(part) == 120
            seqs += part["seq"].tolist()
            seqs += rb.drain()["seq"].tolist()
        assert cap == 409
        assert seqs == list(range(2400))
        assert int(TypedMap(loaded.map("lost"), U32, U64).sum_percpu(0)) == 0
        # drain_into a preallocated buffer
        out = np.zeros(64, REC_DTYPE)
        test_run(prog, PKT, repeat=100)
        n1 = rb.drain_into(out)
        assert n1 == 64 and out["seq"][0] == 2400
        assert rb.drain_into(out) == 36 and out["seq"][35] == 2499
    finally:
        rb.close()


def test_ringbuf_discarded_records_skipped(loaded):
    TypedMap(loaded.map("discard_odd"), U32, U32).update(0, 1)
    rb = RingBufferReader(loaded.map("events"), REC_DTYPE)
    try:
        test_run(loaded.program("count_pkts"), PKT, repeat=50)
        recs = rb.drain()
        assert recs["seq"].tolist() == list(range(0, 50, 2))
        assert rb.discarded == 25 and rb.pending_bytes() == 0
    finally:
        rb.close()


def test_ringbuf_full_lost_accounting(loaded):
    rb = RingBufferReader(loaded.map("events"), REC_DTYPE)
    try:
        produced = 1000
        test_run(loaded.program("count_pkts"), PKT, repeat=produced)
        lost = int(TypedMap(loaded.map("lost"), U32, U64).sum_percpu(0))
        drained = len(rb.drain())
        assert drained == rb.capacity_records and lost > 0
        assert drained + lost == produced
    finally:
        rb.close()


def test_ringbuf_survives_reader_and_object_restart(objs, pin_root):
    with BpfObject.open(objs["prog"], pin_root=pin_root) as o1:
        o1.load()
        test_run(o1.program("count_pkts"), PKT, repeat=50)
        r1 = RingBufferReader(o1.map("events"), REC_DTYPE)
        assert r1.drain(max_records=20)["seq"].tolist() == list(range(20))
        r1.close()
    # No object, no reader: the pinned ring keeps the rest.
    with Map.open_pinned(pin_root / "events") as m:
        r2 = RingBufferReader(m, REC_DTYPE)
        assert r2.drain(max_records=10)["seq"].tolist() == list(range(20, 30))
        r2.close()
    with BpfObject.open(objs["prog"], pin_root=pin_root) as o2:
        o2.load()
        test_run(o2.program("count_pkts"), PKT, repeat=5)
        r3 = RingBufferReader(o2.map("events"), REC_DTYPE)
        assert r3.drain()["seq"].tolist() == list(range(30, 55))
        r3.close()


def test_ringbuf_rejects_non_ringbuf(loaded):
    with pytest.raises(ValueError):
        RingBufferReader(loaded.map("hashm"), REC_DTYPE)


# ---- attach: tcx, tc, pinned links --------------------------------------------------------------


def test_tcx_attach_traffic_and_update(loaded, vethns):
    link = attach_tc(loaded.program("count_pkts"), vethns["ifindex"], "ingress")
    try:
        assert link.kind == "tcx" and link.fd > 0
        send_udp(vethns, 20)
        assert percpu_sum(loaded.map("pkt_count")) >= 20
        rb = RingBufferReader(loaded.map("events"), REC_DTYPE)
        recs = rb.drain()
        rb.close()
        assert len(recs) >= 20 and (recs["len"] == 14 + 20 + 8 + 32).sum() >= 20
        before = percpu_sum(loaded.map("pkt_count"))
        link.update(loaded.program("count_pkts2"))
        assert link.prog_id != 0
        send_udp(vethns, 10)
        assert percpu_sum(loaded.map("count2")) >= 10
        assert percpu_sum(loaded.map("pkt_count")) == before
    finally:
        link.detach()
    send_udp(vethns, 5)
    assert percpu_sum(loaded.map("count2")) < 15 + 5  # detached: nothing much more counted
    c2 = percpu_sum(loaded.map("count2"))
    send_udp(vethns, 5)
    assert percpu_sum(loaded.map("count2")) == c2


def test_tc_clsact_fallback(loaded, vethns):
    link = attach_tc(loaded.program("count_pkts"), vethns["ifindex"], "egress", mode="tc")
    try:
        assert link.kind == "tc" and link.prog_id != 0
        # egress of the host veth: host -> netns traffic
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(15):
            s.sendto(b"y" * 16, (vethns["ns_ip"], 9))
        s.close()
        time.sleep(0.05)
        assert percpu_sum(loaded.map("pkt_count")) >= 15
        link.update(loaded.program("count_pkts2"))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(5):
            s.sendto(b"y" * 16, (vethns["ns_ip"], 9))
        s.close()
        time.sleep(0.05)
        assert percpu_sum(loaded.map("count2")) >= 5
    finally:
        link.detach()
    assert (
        "clsact"
        in subprocess.run(
            ["tc", "qdisc", "show", "dev", vethns["host"]], capture_output=True, text=True
        ).stdout
    )


def test_pinned_link_survives_process_exit(objs, pin_root, vethns):
    link_pin = pin_root / "links" / "ingress"
    script = textwrap.dedent(
        f"""
        from tendril.bpf import BpfObject, attach_tc
        obj = BpfObject.open({str(objs["prog"])!r}, pin_root={str(pin_root)!r})
        obj.load()
        prog = obj.program("count_pkts")
        link = attach_tc(prog, {vethns["ifindex"]}, "ingress", pin_path={str(link_pin)!r})
        assert link.kind == "tcx"
        print(link.prog_id)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([PY, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    child_prog_id = int(r.stdout.strip())
    assert link_pin.exists()

    # The child is gone; its program still runs and counts into the pinned map.
    with Map.open_pinned(pin_root / "persist") as persist:
        tm = TypedMap(persist, U32, U64)
        before = int(tm.lookup(0))
        send_udp(vethns, 10)
        assert int(tm.lookup(0)) >= before + 10

    link = Link.open_pinned(link_pin)
    try:
        assert link.kind == "tcx" and link.ifindex == vethns["ifindex"] and link.direction == "ingress"
        assert link.prog_id == child_prog_id
        # A restarted agent: reload reusing pinned maps, re-attach (atomic replace of the pinned link).
        with BpfObject.open(objs["prog"], pin_root=pin_root) as obj:
            obj.load()
            l2 = attach_tc(obj.program("count_pkts2"), vethns["ifindex"], "ingress", pin_path=link_pin)
            assert l2.kind == "tcx" and l2.prog_id != child_prog_id
            send_udp(vethns, 10)
            assert percpu_sum(obj.map("count2")) >= 10
            l2.close()
    finally:
        link.detach()
    assert not link_pin.exists()


def test_unpinned_link_closes_with_fd(loaded, vethns):
    link = attach_tc(loaded.program("count_pkts2"), vethns["ifindex"], "ingress")
    link.close()  # not pinned: the kernel detaches when the last fd goes
    before = percpu_sum(loaded.map("count2"))  # may count IPv6 RS/MLD sent while it was attached
    send_udp(vethns, 5)
    assert percpu_sum(loaded.map("count2")) == before


def test_cgroup_link(loaded, pin_root):
    cg = Path("/sys/fs/cgroup/unified") / f"tndtest-{secrets.token_hex(4)}"
    if not cg.parent.is_dir():
        pytest.skip("no cgroup v2 at /sys/fs/cgroup/unified")
    cg.mkdir()
    try:
        link = attach_cgroup(
            loaded.program("count_connect4"), cg, AttachType.CGROUP_INET4_CONNECT, pin_root / "cg"
        )
        try:
            assert link.kind == "cgroup" and link.prog_id != 0
            code = (
                f"import os,socket; open('{cg}/cgroup.procs','w').write(str(os.getpid()))\n"
                "for i in range(3):\n"
                "    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.connect(('127.0.0.1',9)); s.close()"
            )
            subprocess.run([PY, "-c", code], check=True, timeout=30)
            assert int(TypedMap(loaded.map("connects"), U32, U64).lookup(0)) == 3
            again = Link.open_pinned(pin_root / "cg")
            assert again.kind == "cgroup"
            again.close()
        finally:
            link.detach()
        assert not (pin_root / "cg").exists()
    finally:
        cg.rmdir()


def test_ringbuf_fileno_wakes_poller(loaded):
    import select
    import threading

    rb = RingBufferReader(loaded.map("events"), REC_DTYPE)
    try:
        p = select.poll()
        p.register(rb.fileno(), select.POLLIN)
        assert p.poll(0) == []
        t = threading.Timer(0.05, lambda: test_run(loaded.program("count_pkts"), PKT, repeat=3))
        t.start()
        ev = p.poll(5000)
        t.join()
        assert ev and ev[0][1] & select.POLLIN
        assert len(rb.drain()) == 3
    finally:
        rb.close()


# ---- bpffs helpers ------------------------------------------------------------------------------


def test_bpffs_pin_dir_and_remove(objs):
    assert is_bpffs("/sys/fs/bpf")
    node = f"tndtest-{secrets.token_hex(4)}"
    root = Path("/sys/fs/bpf") / f"tndtest-{secrets.token_hex(4)}"
    try:
        d = pin_dir(node, root=root)
        assert d == root / node and d.is_dir()
        with BpfObject.open(objs["prog"], pin_root=d) as obj:
            obj.load()
            obj.map("hashm").pin(d / "nested" / "hashm")
        assert (d / "persist").exists()
        remove_pins(node, root=root)
        assert not d.exists()
        remove_pins(node, root=root)  # idempotent
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_privilege_error_message():
    e = MissingPrivilegeError("loading x.o")
    assert str(e) == "tendril needs root (CAP_BPF, CAP_NET_ADMIN) to load eBPF programs: loading x.o"
