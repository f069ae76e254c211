"""ctypes bindings to the system libbpf.so.1 (libbpf 1.1.2).

Why ctypes and not a pip package: pylibbpf does not work on this platform (Python 3.11, tc/cgroup
attach, no ring buffer), and libbpf is the reference implementation of ELF loading, CO-RE and map
pinning; re-doing that in Python would be a large, risky project. Only what Tendril needs is bound,
and every function gets explicit argtypes/restype so a wrong call fails loudly instead of
corrupting memory.

The option structs below mirror /usr/include/bpf/{libbpf,bpf}.h of libbpf 1.1.2 field by field;
each starts with ``sz`` which libbpf uses to accept older/newer layouts, so an exact size matters.

libbpf 1.x convention: functions returning int return ``-errno`` on failure (and also set errno);
functions returning pointers return NULL and set errno. :func:`check` turns both into BpfError.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tendril.bpf.errors import BpfError

log = logging.getLogger("tendril.bpf.libbpf")

_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

c_int = ctypes.c_int
c_uint = ctypes.c_uint
c_u32 = ctypes.c_uint32
c_u64 = ctypes.c_uint64
c_size_t = ctypes.c_size_t
c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p

# ---- kernel constants (uapi linux/bpf.h) -------------------------------------------------------

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4

BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47

BPF_TC_INGRESS = 1 << 0
BPF_TC_EGRESS = 1 << 1
BPF_TC_F_REPLACE = 1 << 0

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_MAP_TYPE_HASH_OF_MAPS = 13
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21
BPF_MAP_TYPE_RINGBUF = 27

MAP_IN_MAP_TYPES = frozenset({BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS})

BPF_F_NO_PREALLOC = 1 << 0  # map_flags: required for LPM tries
BPF_F_RDONLY_PROG = 1 << 8  # programs may only read the map

PERCPU_MAP_TYPES = frozenset(
    {
        BPF_MAP_TYPE_PERCPU_HASH,
        BPF_MAP_TYPE_PERCPU_ARRAY,
        BPF_MAP_TYPE_LRU_PERCPU_HASH,
        BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
    }
)

# ---- option structs (layouts checked against libbpf 1.1.2 headers) ----------------------------


class bpf_object_open_opts(ctypes.Structure):  # noqa: N801 - C name
    """libbpf.h: size 80 on x86_64 (``__u32 :32`` stub for removed attach_prog_fd at 32)."""

    _fields_ = [
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", c_char_p),
        ("_attach_prog_fd_stub", c_u32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
        ("kernel_log_buf", c_void_p),
        ("kernel_log_size", c_size_t),
        ("kernel_log_level", c_u32),
    ]


class bpf_map_create_opts(ctypes.Structure):  # noqa: N801
    """bpf.h: size 48."""

    _fields_ = [
        ("sz", c_size_t),
        ("btf_fd", c_u32),
        ("btf_key_type_id", c_u32),
        ("btf_value_type_id", c_u32),
        ("btf_vmlinux_value_type_id", c_u32),
        ("inner_map_fd", c_u32),
        ("map_flags", c_u32),
        ("map_extra", c_u64),
        ("numa_node", c_u32),
        ("map_ifindex", c_u32),
    ]


class bpf_test_run_opts(ctypes.Structure):  # noqa: N801
    """bpf.h: size 80."""

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_u32),
        ("data_size_out", c_u32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_u32),
        ("ctx_size_out", c_u32),
        ("retval", c_u32),
        ("repeat", c_int),
        ("duration", c_u32),
        ("flags", c_u32),
        ("cpu", c_u32),
        ("batch_size", c_u32),
    ]


class bpf_tc_hook(ctypes.Structure):  # noqa: N801
    """libbpf.h: size 24 (``size_t :0`` pads to 8)."""

    _fields_ = [
        ("sz", c_size_t),
        ("ifindex", c_int),
        ("attach_point", c_int),
        ("parent", c_u32),
        ("_pad", c_u32),
    ]


class bpf_tc_opts(ctypes.Structure):  # noqa: N801
    """libbpf.h: size 32."""

    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_u32),
        ("prog_id", c_u32),
        ("handle", c_u32),
        ("priority", c_u32),
        ("_pad", c_u32),
    ]


class bpf_link_update_opts(ctypes.Structure):  # noqa: N801
    _fields_ = [("sz", c_size_t), ("flags", c_u32), ("old_prog_fd", c_u32)]


class bpf_map_batch_opts(ctypes.Structure):  # noqa: N801
    _fields_ = [("sz", c_size_t), ("elem_flags", c_u64), ("flags", c_u64)]


class bpf_map_info(ctypes.Structure):  # noqa: N801
    """uapi linux/bpf.h struct bpf_map_info (size 88)."""

    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("key_size", c_u32),
        ("value_size", c_u32),
        ("max_entries", c_u32),
        ("map_flags", c_u32),
        ("name", ctypes.c_char * 16),
        ("ifindex", c_u32),
        ("btf_vmlinux_value_type_id", c_u32),
        ("netns_dev", c_u64),
        ("netns_ino", c_u64),
        ("btf_id", c_u32),
        ("btf_key_type_id", c_u32),
        ("btf_value_type_id", c_u32),
        ("_pad", c_u32),
        ("map_extra", c_u64),
    ]


class bpf_link_info(ctypes.Structure):  # noqa: N801
    """uapi struct bpf_link_info: header then an 8-aligned union; we read tcx {ifindex, attach_type}."""

    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("prog_id", c_u32),
        ("_pad", c_u32),
        ("u0", c_u32),  # tcx.ifindex / netns.netns_ino / ...
        ("u1", c_u32),  # tcx.attach_type
        ("_rest", c_u64 * 6),
    ]


class bpf_prog_info_head(ctypes.Structure):  # noqa: N801
    """The first fields of uapi struct bpf_prog_info; the kernel accepts a shorter info_len."""

    _fields_ = [("type", c_u32), ("id", c_u32), ("tag", ctypes.c_uint8 * 8)]


# ---- function prototypes ------------------------------------------------------------------------

PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)


def _fn(name: str, restype, *argtypes):
    f = getattr(_lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


P = ctypes.POINTER

bpf_object__open_file = _fn("bpf_object__open_file", c_void_p, c_char_p, P(bpf_object_open_opts))
bpf_object__load = _fn("bpf_object__load", c_int, c_void_p)
bpf_object__close = _fn("bpf_object__close", None, c_void_p)
bpf_object__find_program_by_name = _fn("bpf_object__find_program_by_name", c_void_p, c_void_p, c_char_p)
bpf_object__find_map_by_name = _fn("bpf_object__find_map_by_name", c_void_p, c_void_p, c_char_p)
bpf_object__next_program = _fn("bpf_object__next_program", c_void_p, c_void_p, c_void_p)
bpf_object__next_map = _fn("bpf_object__next_map", c_void_p, c_void_p, c_void_p)
bpf_program__fd = _fn("bpf_program__fd", c_int, c_void_p)
bpf_program__name = _fn("bpf_program__name", c_char_p, c_void_p)
bpf_program__set_autoload = _fn("bpf_program__set_autoload", c_int, c_void_p, ctypes.c_bool)
bpf_map__fd = _fn("bpf_map__fd", c_int, c_void_p)
bpf_map__name = _fn("bpf_map__name", c_char_p, c_void_p)
bpf_map__set_max_entries = _fn("bpf_map__set_max_entries", c_int, c_void_p, c_u32)
bpf_map__max_entries = _fn("bpf_map__max_entries", c_u32, c_void_p)
bpf_map__reuse_fd = _fn("bpf_map__reuse_fd", c_int, c_void_p, c_int)
bpf_map__set_pin_path = _fn("bpf_map__set_pin_path", c_int, c_void_p, c_char_p)
bpf_map__pin_path = _fn("bpf_map__pin_path", c_char_p, c_void_p)
bpf_map__is_pinned = _fn("bpf_map__is_pinned", ctypes.c_bool, c_void_p)

bpf_obj_pin = _fn("bpf_obj_pin", c_int, c_int, c_char_p)
bpf_obj_get = _fn("bpf_obj_get", c_int, c_char_p)
bpf_map_create = _fn("bpf_map_create", c_int, c_int, c_char_p, c_u32, c_u32, c_u32, P(bpf_map_create_opts))
bpf_map_get_fd_by_id = _fn("bpf_map_get_fd_by_id", c_int, c_u32)
bpf_obj_get_info_by_fd = _fn("bpf_obj_get_info_by_fd", c_int, c_int, c_void_p, P(c_u32))

bpf_map_update_elem = _fn("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, c_u64)
bpf_map_lookup_elem = _fn("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
bpf_map_delete_elem = _fn("bpf_map_delete_elem", c_int, c_int, c_void_p)
bpf_map_get_next_key = _fn("bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p)
bpf_map_lookup_batch = _fn(
    "bpf_map_lookup_batch",
    c_int,
    c_int,
    c_void_p,
    c_void_p,
    c_void_p,
    c_void_p,
    P(c_u32),
    P(bpf_map_batch_opts),
)

bpf_link_create = _fn("bpf_link_create", c_int, c_int, c_int, c_int, c_void_p)
bpf_link_update = _fn("bpf_link_update", c_int, c_int, c_int, P(bpf_link_update_opts))
bpf_link_detach = _fn("bpf_link_detach", c_int, c_int)

bpf_tc_hook_create = _fn("bpf_tc_hook_create", c_int, P(bpf_tc_hook))
bpf_tc_hook_destroy = _fn("bpf_tc_hook_destroy", c_int, P(bpf_tc_hook))
bpf_tc_attach = _fn("bpf_tc_attach", c_int, P(bpf_tc_hook), P(bpf_tc_opts))
bpf_tc_detach = _fn("bpf_tc_detach", c_int, P(bpf_tc_hook), P(bpf_tc_opts))
bpf_tc_query = _fn("bpf_tc_query", c_int, P(bpf_tc_hook), P(bpf_tc_opts))

bpf_prog_test_run_opts = _fn("bpf_prog_test_run_opts", c_int, c_int, P(bpf_test_run_opts))

libbpf_num_possible_cpus = _fn("libbpf_num_possible_cpus", c_int)
libbpf_set_print = _fn("libbpf_set_print", c_void_p, PRINT_FN)

_vsnprintf = _libc.vsnprintf
_vsnprintf.restype = c_int
_vsnprintf.argtypes = [c_void_p, c_size_t, c_char_p, c_void_p]

# ---- error helpers ------------------------------------------------------------------------------


def check(rc: int, what: str) -> int:
    """Raise BpfError for a libbpf int return < 0 (``-errno``); return rc otherwise."""
    if rc < 0:
        err = -rc if rc != -1 else (ctypes.get_errno() or 1)
        raise BpfError(err, what)
    return rc


def check_ptr(ptr: int | None, what: str) -> int:
    """Raise BpfError for a NULL pointer return (errno set by libbpf)."""
    if not ptr:
        raise BpfError(ctypes.get_errno() or 22, what)
    return ptr


def num_possible_cpus() -> int:
    """Number of possible CPUs: per-CPU map values hold one slot per possible (not online) CPU."""
    n = libbpf_num_possible_cpus()
    if n <= 0:
        raise BpfError(-n or 22, "libbpf_num_possible_cpus")
    return n


# ---- print callback: libbpf log -> logging + per-load capture ----------------------------------

_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_tls = threading.local()


class _VaListTag(ctypes.Structure):
    """x86_64 SysV va_list element; copying it is what va_copy does, so we can format twice."""

    _fields_ = [("gp", c_u32), ("fp", c_u32), ("overflow", c_void_p), ("reg_save", c_void_p)]


def _format(fmt: bytes, ap: int) -> str:
    saved = _VaListTag.from_address(ap)
    size = 4096
    while True:
        copy = _VaListTag()
        ctypes.pointer(copy)[0] = saved  # va_copy
        buf = ctypes.create_string_buffer(size)
        n = _vsnprintf(buf, size, fmt, ctypes.addressof(copy))
        if n < 0:
            return fmt.decode(errors="replace")
        if n < size:
            return buf.raw[:n].decode(errors="replace")
        size = n + 1


def _print_cb(level: int, fmt: bytes, ap: int) -> int:
    try:
        msg = _format(fmt, ap)
        captures = getattr(_tls, "captures", None)
        pylevel = _LEVELS.get(level, logging.DEBUG)
        if captures:
            for c in captures:
                c.append(msg)
            # The verifier log travels in the LoadError; do not also dump it at WARNING.
            if "-- BEGIN PROG LOAD LOG --" in msg:
                pylevel = logging.DEBUG
        text = msg.rstrip("\n")
        if text:
            log.log(pylevel, "%s", text)
    except Exception:  # never let an exception cross the C boundary
        pass
    return 0


_print_cb_c = PRINT_FN(_print_cb)  # keep a reference: libbpf stores the raw pointer
libbpf_set_print(_print_cb_c)


@contextmanager
def capture_log() -> Iterator[list[str]]:
    """Collect libbpf messages printed by this thread inside the block (e.g. the verifier log)."""
    if not hasattr(_tls, "captures"):
        _tls.captures = []
    buf: list[str] = []
    _tls.captures.append(buf)
    try:
        yield buf
    finally:
        _tls.captures.remove(buf)
