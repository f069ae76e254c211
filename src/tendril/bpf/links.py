"""Attaching programs: tcx links on veths (tc clsact fallback) and cgroup links for socket LB.

Why tcx first: a tcx attachment is a BPF link: it can be pinned (so enforcement continues while the
agent restarts), reopened with bpf_obj_get, and its program replaced atomically with
bpf_link_update. Classic tc clsact + cls_bpf (direct-action) is the fallback for kernels without tcx;
its filters persist on their own and are replaced atomically with BPF_TC_F_REPLACE.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
from enum import IntEnum
from pathlib import Path
from typing import Literal, Protocol

from tendril.bpf import libbpf as lb
from tendril.bpf.errors import BpfError, privilege_error_for

log = logging.getLogger("tendril.bpf.links")

Direction = Literal["ingress", "egress"]
LinkKind = Literal["tcx", "tc", "cgroup"]

_ENOTSUPP = 524
_BPF_LINK_TYPE_CGROUP = 3
_BPF_LINK_TYPE_TCX = 11
_TCX_TYPES = {"ingress": lb.BPF_TCX_INGRESS, "egress": lb.BPF_TCX_EGRESS}
_TC_POINTS = {"ingress": lb.BPF_TC_INGRESS, "egress": lb.BPF_TC_EGRESS}


class AttachType(IntEnum):
    """enum bpf_attach_type values Tendril uses (uapi linux/bpf.h)."""

    CGROUP_INET_INGRESS = 0
    CGROUP_INET_EGRESS = 1
    CGROUP_INET_SOCK_CREATE = 2
    CGROUP_SOCK_OPS = 3
    CGROUP_INET4_CONNECT = 10
    CGROUP_INET6_CONNECT = 11
    CGROUP_UDP4_SENDMSG = 14
    CGROUP_UDP6_SENDMSG = 15
    CGROUP_UDP4_RECVMSG = 19
    CGROUP_UDP6_RECVMSG = 20
    CGROUP_INET4_GETPEERNAME = 29
    CGROUP_INET6_GETPEERNAME = 30
    CGROUP_INET4_GETSOCKNAME = 31
    CGROUP_INET6_GETSOCKNAME = 32
    CGROUP_INET_SOCK_RELEASE = 34
    TCX_INGRESS = 46
    TCX_EGRESS = 47


class _HasFd(Protocol):
    fd: int


def _fd(prog: _HasFd | int) -> int:
    return prog if isinstance(prog, int) else prog.fd


def _err(rc: int, what: str) -> BpfError:
    err = -rc if rc < -1 else (ctypes.get_errno() or errno.EINVAL)
    return privilege_error_for(err, what) or BpfError(err, what)


def link_info(fd: int) -> lb.bpf_link_info:
    """Kernel description of a link (type, prog_id, and for tcx the ifindex and attach type)."""
    info = lb.bpf_link_info()
    ln = ctypes.c_uint32(ctypes.sizeof(info))
    lb.check(lb.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(ln)), "link info")
    return info


def prog_id(prog: _HasFd | int) -> int:
    """Kernel id of a loaded program (to compare with a link's prog_id)."""
    info = lb.bpf_prog_info_head()
    ln = ctypes.c_uint32(ctypes.sizeof(info))
    lb.check(lb.bpf_obj_get_info_by_fd(_fd(prog), ctypes.byref(info), ctypes.byref(ln)), "prog info")
    return info.id


class Link:
    """An attachment. ``kind`` says how: "tcx" / "cgroup" (a BPF link fd) or "tc" (a cls_bpf filter).

    ``close()`` drops our reference only (a pinned link, or a tc filter, stays attached);
    ``detach()`` removes the attachment and its pin.
    """

    def __init__(
        self,
        kind: LinkKind,
        fd: int,
        *,
        ifindex: int = 0,
        direction: Direction | None = None,
        pin_path: Path | None = None,
        tc_handle: int = 0,
        tc_priority: int = 0,
    ) -> None:
        self.kind: LinkKind = kind
        self.fd = fd
        self.ifindex = ifindex
        self.direction = direction
        self.pin_path = pin_path
        self.tc_handle = tc_handle
        self.tc_priority = tc_priority

    def __repr__(self) -> str:
        return (
            f"Link(kind={self.kind!r}, fd={self.fd}, ifindex={self.ifindex}, "
            f"direction={self.direction!r}, pin_path={self.pin_path})"
        )

    # ---- pinning ----

    @classmethod
    def open_pinned(cls, path: str | Path) -> Link:
        """Reopen a pinned link (tcx or cgroup), e.g. after an agent restart."""
        path = Path(path)
        rc = lb.bpf_obj_get(os.fsencode(path))
        if rc < 0:
            raise _err(rc, f"bpf_obj_get({path})")
        info = link_info(rc)
        if info.type == _BPF_LINK_TYPE_TCX:
            direction: Direction | None = "ingress" if info.u1 == lb.BPF_TCX_INGRESS else "egress"
            return cls("tcx", rc, ifindex=info.u0, direction=direction, pin_path=path)
        return cls("cgroup", rc, pin_path=path)

    def pin(self, path: str | Path) -> None:
        """Pin the link so it (and the program attachment) outlives this process."""
        if self.kind == "tc":
            raise BpfError(errno.EOPNOTSUPP, "tc filters cannot be pinned (they persist on their own)")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lb.check(lb.bpf_obj_pin(self.fd, os.fsencode(path)), f"bpf_obj_pin({path})")
        self.pin_path = path

    def unpin(self) -> None:
        if self.pin_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pin_path)
            self.pin_path = None

    # ---- operations ----

    @property
    def prog_id(self) -> int:
        """Kernel id of the currently attached program."""
        if self.kind == "tc":
            hook, opts = self._tc_structs(0)
            opts.handle, opts.priority = self.tc_handle, self.tc_priority
            lb.check(lb.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts)), "bpf_tc_query")
            return opts.prog_id
        return link_info(self.fd).prog_id

    @property
    def defunct(self) -> bool:
        """True for a tcx link whose device went away (the kernel reports ifindex 0)."""
        return self.kind == "tcx" and link_info(self.fd).u0 == 0

    def update(self, prog: _HasFd | int) -> None:
        """Atomically replace the attached program (no packet sees no program)."""
        if self.kind == "tc":
            hook, opts = self._tc_structs(_fd(prog))
            opts.flags = lb.BPF_TC_F_REPLACE
            rc = lb.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
            if rc < 0:
                raise _err(rc, f"bpf_tc_attach(replace, ifindex {self.ifindex})")
            return
        opts = lb.bpf_link_update_opts(sz=ctypes.sizeof(lb.bpf_link_update_opts))
        rc = lb.bpf_link_update(self.fd, _fd(prog), ctypes.byref(opts))
        if rc < 0:
            raise _err(rc, "bpf_link_update")

    def detach(self) -> None:
        """Remove the attachment, unpin and close. Idempotent; a vanished device is not an error."""
        if self.kind == "tc":
            hook, opts = self._tc_structs(0)
            rc = lb.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
            if rc < 0 and -rc not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                raise _err(rc, f"bpf_tc_detach(ifindex {self.ifindex})")
        elif self.fd >= 0:
            rc = lb.bpf_link_detach(self.fd)
            if rc < 0 and -rc not in (errno.ENOLINK, errno.ENOENT, errno.EINVAL):
                raise _err(rc, "bpf_link_detach")
        self.unpin()
        self.close()

    def close(self) -> None:
        """Drop our fd. A pinned link stays attached; an unpinned tcx/cgroup link detaches."""
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tc_structs(self, prog_fd: int) -> tuple[lb.bpf_tc_hook, lb.bpf_tc_opts]:
        assert self.direction is not None
        hook = lb.bpf_tc_hook(
            sz=ctypes.sizeof(lb.bpf_tc_hook), ifindex=self.ifindex, attach_point=_TC_POINTS[self.direction]
        )
        opts = lb.bpf_tc_opts(
            sz=ctypes.sizeof(lb.bpf_tc_opts),
            prog_fd=prog_fd,
            handle=self.tc_handle,
            priority=self.tc_priority,
        )
        return hook, opts


# ---- tc / tcx -----------------------------------------------------------------------------------


def _attach_tcx(prog_fd: int, ifindex: int, direction: Direction) -> int:
    """Return a tcx link fd, or a negative errno."""
    return lb.bpf_link_create(prog_fd, ifindex, _TCX_TYPES[direction], None)


def _attach_tc_clsact(prog_fd: int, ifindex: int, direction: Direction, handle: int, priority: int) -> Link:
    link = Link("tc", -1, ifindex=ifindex, direction=direction, tc_handle=handle, tc_priority=priority)
    hook, opts = link._tc_structs(prog_fd)
    rc = lb.bpf_tc_hook_create(ctypes.byref(hook))
    if rc < 0 and rc != -errno.EEXIST:
        raise _err(rc, f"bpf_tc_hook_create(clsact, ifindex {ifindex})")
    # REPLACE also creates: attaching is idempotent across agent restarts.
    opts.flags = lb.BPF_TC_F_REPLACE
    rc = lb.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
    if rc < 0:
        raise _err(rc, f"bpf_tc_attach(ifindex {ifindex}, {direction})")
    return link


def attach_tc(
    prog: _HasFd | int,
    ifindex: int,
    direction: Direction,
    pin_path: str | Path | None = None,
    *,
    mode: Literal["auto", "tcx", "tc"] = "auto",
    tc_handle: int = 1,
    tc_priority: int = 1,
) -> Link:
    """Attach a SEC("tc") program to ``ifindex`` ingress/egress.

    tcx first (mode "auto"/"tcx"); on EINVAL/EOPNOTSUPP falls back to tc clsact direct-action.
    With ``pin_path`` the tcx link is pinned there; if a live tcx link for the same device and
    direction is already pinned there (an earlier agent's), its program is replaced atomically and
    that link is returned, so restarts and upgrades never leave the device without a program.
    ``pin_path`` is ignored for tc filters (they persist anyway).
    """
    if direction not in _TCX_TYPES:
        raise ValueError(f"direction must be 'ingress' or 'egress', not {direction!r}")
    fd = _fd(prog)
    pin = Path(pin_path) if pin_path is not None else None

    if mode != "tc":
        if pin is not None and pin.exists():
            reused = _reuse_pinned(pin, fd, ifindex, direction)
            if reused is not None:
                return reused
        rc = _attach_tcx(fd, ifindex, direction)
        if rc >= 0:
            link = Link("tcx", rc, ifindex=ifindex, direction=direction)
            if pin is not None:
                try:
                    link.pin(pin)
                except BaseException:
                    link.detach()
                    raise
            return link
        if mode == "tcx" or -rc not in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP):
            raise _err(rc, f"tcx attach (ifindex {ifindex}, {direction})")
        log.info("tcx unavailable (%s), falling back to tc clsact on ifindex %d", os.strerror(-rc), ifindex)
    return _attach_tc_clsact(fd, ifindex, direction, tc_handle, tc_priority)


def _reuse_pinned(pin: Path, prog_fd: int, ifindex: int, direction: Direction) -> Link | None:
    """Update the program of a matching pinned tcx link; unpin a stale one. None = attach anew."""
    try:
        old = Link.open_pinned(pin)
    except BpfError:
        pin.unlink(missing_ok=True)
        return None
    if old.kind == "tcx" and old.ifindex == ifindex and old.direction == direction:
        old.update(prog_fd)
        return old
    log.info("replacing stale pinned link %s (%r)", pin, old)
    if old.kind == "tcx" and old.ifindex == 0:
        old.unpin()
        old.close()
    else:
        old.detach()
    return None


# ---- cgroup -------------------------------------------------------------------------------------


def attach_cgroup(
    prog: _HasFd | int,
    cgroup: int | str | Path,
    attach_type: int,
    pin_path: str | Path | None = None,
) -> Link:
    """Attach a cgroup program (e.g. cgroup/connect4) as a BPF link to a cgroup v2 directory or fd."""
    own_fd = not isinstance(cgroup, int)
    cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY) if own_fd else int(cgroup)
    try:
        rc = lb.bpf_link_create(_fd(prog), cg_fd, int(attach_type), None)
    finally:
        if own_fd:
            os.close(cg_fd)
    if rc < 0:
        raise _err(rc, f"cgroup attach ({cgroup}, type {int(attach_type)})")
    link = Link("cgroup", rc)
    if pin_path is not None:
        try:
            link.pin(pin_path)
        except BaseException:
            link.detach()
            raise
    return link
