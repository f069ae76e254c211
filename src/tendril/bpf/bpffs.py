"""bpffs handling: make sure /sys/fs/bpf is a bpf filesystem and manage Tendril's pin directories.

Why: pinned maps and links are what survive agent restarts; they need bpffs mounted, and a per-node
directory (/sys/fs/bpf/tendril/<node>/) so several lab nodes on one host do not collide.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
from pathlib import Path

from tendril.bpf.errors import MissingFeatureError, MissingPrivilegeError

BPFFS = Path("/sys/fs/bpf")
TENDRIL_ROOT = BPFFS / "tendril"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.mount.restype = ctypes.c_int


def is_bpffs(path: str | Path = BPFFS) -> bool:
    """True if ``path`` is the mount point of a bpf filesystem (per /proc/self/mounts)."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] == target and parts[2] == "bpf":
                return True
    return False


def ensure_bpffs(path: str | Path = BPFFS) -> Path:
    """Mount bpffs at ``path`` if it is not already; raise a clear error if that is impossible."""
    path = Path(path)
    if is_bpffs(path):
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MissingFeatureError(f"cannot create bpffs mount point {path}: {e}", e.errno or errno.EIO) from e
    if _libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise MissingPrivilegeError(f"mounting bpffs at {path}")
        raise MissingFeatureError(f"cannot mount bpffs at {path} (mount -t bpf bpf {path})", err)
    return path


def pin_dir(node: str, root: str | Path = TENDRIL_ROOT) -> Path:
    """/sys/fs/bpf/tendril/<node>/, created on demand (bpffs mounted first if needed)."""
    if not node or "/" in node or node in (".", ".."):
        raise ValueError(f"bad node name {node!r}")
    root = Path(root)
    ensure_bpffs(BPFFS if root.is_relative_to(BPFFS) else root)
    d = root / node
    d.mkdir(parents=True, exist_ok=True)
    return d


def remove_pins(node: str | Path, root: str | Path = TENDRIL_ROOT) -> None:
    """Unpin everything under the node's directory and remove it (no error if absent).

    Unlinking a pin drops that reference: a pinned tcx link nobody else holds is then released, which
    detaches its program; maps are freed once no program or fd uses them.
    """
    d = Path(node) if Path(node).is_absolute() else Path(root) / node
    if d.exists():
        shutil.rmtree(d)
    if d.parent == Path(root):
        with contextlib.suppress(OSError):  # the last node gone: leave no empty tendril/ behind
            d.parent.rmdir()
