"""BPF_PROG_TEST_RUN: run a loaded program on a synthetic packet in the kernel.

Why: it exercises the real verifier-approved program (parsing, maps, ring buffer) without any
network setup, which makes datapath unit tests and benchmarks cheap and deterministic.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Protocol

from tendril.bpf import libbpf as lb

_OUT_HEADROOM = 512  # programs may grow packets (encap); give data_out some room


class _HasFd(Protocol):
    fd: int


@dataclass(frozen=True)
class TestRunResult:
    """retval: program return code; data_out: packet after the program; duration_ns: mean per run."""

    __test__ = False  # not a pytest test class

    retval: int
    data_out: bytes
    duration_ns: int
    ctx_out: bytes | None = None


def test_run(
    prog: _HasFd | int,
    data: bytes,
    repeat: int = 1,
    ctx: bytes | None = None,
) -> TestRunResult:
    """Run ``prog`` ``repeat`` times on ``data`` (for tc: a full Ethernet frame, >= 14 bytes).

    ``ctx`` is an optional ``struct __sk_buff`` image (e.g. to set ifindex or mark); when given,
    the kernel's updated ctx comes back as ``ctx_out``.
    """
    fd = prog if isinstance(prog, int) else prog.fd
    data_in = ctypes.create_string_buffer(bytes(data), len(data))
    out_size = len(data) + _OUT_HEADROOM
    data_out = ctypes.create_string_buffer(out_size)
    opts = lb.bpf_test_run_opts(sz=ctypes.sizeof(lb.bpf_test_run_opts))
    opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
    opts.data_size_in = len(data)
    opts.data_out = ctypes.cast(data_out, ctypes.c_void_p)
    opts.data_size_out = out_size
    opts.repeat = max(1, int(repeat))
    ctx_in = ctx_out = None
    if ctx is not None:
        ctx_in = ctypes.create_string_buffer(bytes(ctx), len(ctx))
        ctx_out = ctypes.create_string_buffer(len(ctx))
        opts.ctx_in = ctypes.cast(ctx_in, ctypes.c_void_p)
        opts.ctx_size_in = len(ctx)
        opts.ctx_out = ctypes.cast(ctx_out, ctypes.c_void_p)
        opts.ctx_size_out = len(ctx)
    lb.check(lb.bpf_prog_test_run_opts(fd, ctypes.byref(opts)), "bpf_prog_test_run")
    return TestRunResult(
        retval=ctypes.c_int32(opts.retval).value,
        data_out=data_out.raw[: opts.data_size_out],
        duration_ns=opts.duration,
        ctx_out=None if ctx_out is None else ctx_out.raw[: opts.ctx_size_out],
    )


test_run.__test__ = False  # type: ignore[attr-defined]  # importing it into a test module must not make pytest collect it
