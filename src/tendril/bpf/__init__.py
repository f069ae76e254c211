"""Tendril's eBPF loader: a thin typed layer over the system libbpf.so.1 (ctypes).

Why this exists: the agent needs to load the datapath object, keep maps pinned across restarts,
attach programs to veths (tcx, tc fallback), read maps as numpy arrays and drain the event ring
buffer fast. See the module docstrings for the details of each part.
"""

from tendril.bpf import errors
from tendril.bpf.errors import BpfError, LoadError, MissingFeatureError, MissingPrivilegeError
from tendril.bpf.maps import Map, TypedMap, create_map, create_policy_map
from tendril.bpf.object import BpfObject, Program
from tendril.bpf.testrun import TestRunResult, test_run

__all__ = [
    "AttachType",
    "BpfError",
    "BpfObject",
    "Link",
    "LoadError",
    "Map",
    "MissingFeatureError",
    "MissingPrivilegeError",
    "Program",
    "RingBufferReader",
    "TestRunResult",
    "TypedMap",
    "attach_cgroup",
    "attach_tc",
    "create_map",
    "create_policy_map",
    "errors",
    "test_run",
]

from tendril.bpf.links import AttachType, Link, attach_cgroup, attach_tc  # noqa: E402
from tendril.bpf.ringbuf import RingBufferReader  # noqa: E402
