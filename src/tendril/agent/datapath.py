"""The node's eBPF datapath as the agent sees it: one loaded object, its pinned maps, per-endpoint links.

Loading always goes through the pinned maps (libbpf reuses them by name), so a restarted agent gets
the same conntrack, metrics and ring buffer the kernel kept using while it was away; the pinned tcx
links are then switched to the freshly loaded programs atomically, so traffic never sees a gap.

Overlay: ``attach_overlay(ifindex)`` loads overlay.o (it shares the pinned maps) and attaches
tnd_from_overlay to the ingress of the node's VXLAN device (see tendril.datapath.overlay), then
``set_overlay(ifindex)`` makes tnd_from_container send packets for remote pods (ipcache entries with
a tunnel endpoint) into it. ``set_overlay(0)`` = native routing. ``configure()`` and
``set_overlay()`` each change only their own fields of the settings map.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from pathlib import Path

import numpy as np

from tendril.bpf import BpfObject, Link, TypedMap, abi, attach_tc
from tendril.bpf.bpffs import ensure_bpffs
from tendril.bpf.links import AttachType, attach_cgroup
from tendril.bpf.maps import Map
from tendril.common import paths
from tendril.common.errors import TendrilError

log = logging.getLogger(__name__)

U32 = np.dtype("<u4")
DIRECTIONS = (("ingress", "tnd_from_container"), ("egress", "tnd_to_container"))
# Socket LB: attached once to the node's cgroup, so every pod cgroup below it inherits them.
SOCK_PROGRAMS = (
    ("tnd_sock4_connect", AttachType.CGROUP_INET4_CONNECT),
    ("tnd_sock6_connect", AttachType.CGROUP_INET6_CONNECT),
    ("tnd_sock4_sendmsg", AttachType.CGROUP_UDP4_SENDMSG),
    ("tnd_sock6_sendmsg", AttachType.CGROUP_UDP6_SENDMSG),
    ("tnd_sock4_recvmsg", AttachType.CGROUP_UDP4_RECVMSG),
    ("tnd_sock6_recvmsg", AttachType.CGROUP_UDP6_RECVMSG),
    ("tnd_sock4_getpeername", AttachType.CGROUP_INET4_GETPEERNAME),
    ("tnd_sock6_getpeername", AttachType.CGROUP_INET6_GETPEERNAME),
)


class Datapath:
    def __init__(self, node: str, ring_bytes: int = 4 << 20, object_path: Path | None = None) -> None:
        self.node = node
        self.pin_dir = paths.bpf_pin_dir(node)
        self.link_dir = self.pin_dir / "links"
        self.object_path = object_path or paths.bpf_object_dir() / "lxc.o"
        self.ring_bytes = ring_bytes
        self.obj: BpfObject | None = None
        self.sock_obj: BpfObject | None = None
        self.overlay_obj: BpfObject | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    def load(self) -> None:
        if not self.object_path.exists():
            raise TendrilError(
                f"BPF object {self.object_path} is missing: run `make -C bpf` (scripts/setup.sh)"
            )
        ensure_bpffs()
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        self.link_dir.mkdir(parents=True, exist_ok=True)
        old_settings = self._retire_stale_settings_pin()
        obj = BpfObject.open(
            self.object_path, pin_root=self.pin_dir, map_sizes={"tnd_events": self.ring_bytes}
        )
        obj.load()
        self.obj = obj
        self.endpoints = TypedMap(obj.map("tnd_endpoints"), U32, abi.ENDPOINT_INFO_DTYPE)
        self.ct = TypedMap(obj.map("tnd_ct"), abi.CT_KEY_DTYPE, abi.CT_VALUE_DTYPE)
        self.metrics = TypedMap(obj.map("tnd_metrics"), U32, abi.METRICS_VALUE_DTYPE)
        self.settings = TypedMap(obj.map("tnd_settings"), U32, abi.SETTINGS_DTYPE)
        if old_settings is not None:  # carry trace level and flags over from the older layout
            value = np.zeros((), dtype=abi.SETTINGS_DTYPE)
            raw = bytearray(value.tobytes())
            n = min(len(old_settings), abi.SETTINGS_DTYPE.fields["overlay_ifindex"][1])
            raw[:n] = old_settings[:n]
            self.settings.update(np.uint32(0), np.frombuffer(bytes(raw), abi.SETTINGS_DTYPE)[0])
        self.lost = TypedMap(obj.map("tnd_lost"), U32, np.dtype("<u8"))
        self.events_map: Map = obj.map("tnd_events")
        self.payloads_map: Map = obj.map(abi.MAP_PAYLOADS)
        self.payloads_lost = TypedMap(obj.map(abi.MAP_PAYLOADS_LOST), U32, np.dtype("<u8"))

    def _retire_stale_settings_pin(self) -> bytes | None:
        """A tnd_settings pinned by an older datapath with another value layout cannot be reused (libbpf
        refuses the load): unpin it and return its old value; the programs still attached keep their
        map until their links are re-pointed. None when there is nothing to migrate."""
        pin = self.pin_dir / abi.MAP_SETTINGS
        if not pin.exists():
            return None
        with Map.open_pinned(pin) as m:
            if m.value_size == abi.SETTINGS_DTYPE.itemsize:
                return None
            old = m.lookup(bytes(4)) or b""
        log.info(
            "tnd_settings pinned with %d-byte values: replacing it (now %d)",
            len(old),
            abi.SETTINGS_DTYPE.itemsize,
        )
        pin.unlink()
        return old

    def close(self) -> None:
        for attr in ("obj", "sock_obj", "overlay_obj"):
            obj = getattr(self, attr, None)
            if obj is not None:
                obj.close()
                setattr(self, attr, None)

    # ---- service load balancing ----------------------------------------------------------------
    def attach_services(self, node_cgroup: Path, netdev_ifindex: int | None) -> None:
        """Load sock.o (it shares the pinned maps) and attach the socket LB to the node's cgroup and
        the NodePort packet LB to the node's underlay device; pinned, so restarts re-point them."""
        obj = BpfObject.open(paths.bpf_object_dir() / "sock.o", pin_root=self.pin_dir)
        obj.load()
        self.sock_obj = obj
        self.cgroups = TypedMap(obj.map("tnd_lb_cgroups"), np.dtype("<u8"), abi.LB_CGROUP_DTYPE)
        for name, attach_type in SOCK_PROGRAMS:
            pin = self.link_dir / f"cgroup-{name}"
            prog = obj.program(name)
            if pin.exists():
                try:
                    link = Link.open_pinned(pin)
                    link.update(prog)
                    link.close()
                    continue
                except Exception as e:  # the cgroup was recreated: attach anew
                    log.info("re-attaching %s: %s", name, e)
                    pin.unlink(missing_ok=True)
            attach_cgroup(prog, node_cgroup, attach_type, pin_path=pin).close()
        if netdev_ifindex:
            attach_tc(
                obj.program("tnd_from_netdev"),
                netdev_ifindex,
                "ingress",
                pin_path=self.link_dir / "netdev-ingress",
            ).close()

    def register_cgroup(self, cgroup_path: str, ep_id: int) -> None:
        """Socket-LB events name the pod: its cgroup id (the directory's inode) -> endpoint ID."""
        if getattr(self, "cgroups", None) is None or not cgroup_path:
            return
        import os

        self.cgroups.update(np.uint64(os.stat(cgroup_path).st_ino), abi.lb_cgroup(ep_id))

    def unregister_cgroup(self, cgroup_path: str) -> None:
        import os

        if getattr(self, "cgroups", None) is None or not cgroup_path or not os.path.exists(cgroup_path):
            return
        self.cgroups.delete(np.uint64(os.stat(cgroup_path).st_ino))

    def _settings_value(self) -> np.void:
        current = self.settings.lookup(np.uint32(0))
        return current.copy() if current is not None else np.zeros((), dtype=abi.SETTINGS_DTYPE)[()]

    def configure(self, trace_level: int, audit: bool = False, source_ip_check: bool = True) -> None:
        """Datapath settings: trace aggregation, PolicyAuditMode, source IP verification (the overlay
        device set by set_overlay() is kept)."""
        value = self._settings_value()
        value["trace_level"] = trace_level
        flags = abi.SETTINGS_SOURCE_IP_CHECK if source_ip_check else 0
        if audit:
            flags |= abi.SETTINGS_POLICY_AUDIT
        value["flags"] = flags
        self.settings.update(np.uint32(0), value)

    # ---- overlay (VXLAN) -----------------------------------------------------------------------
    def set_overlay(self, ifindex: int) -> None:
        """The VXLAN device tnd_from_container sends remote pods' traffic into; 0 = native routing.
        Only this field of the settings changes (trace level and flags are kept)."""
        if ifindex < 0:
            raise ValueError(f"overlay ifindex {ifindex}: must be >= 0 (0 = no overlay)")
        value = self._settings_value()
        value["overlay_ifindex"] = ifindex
        self.settings.update(np.uint32(0), value)

    def overlay_ifindex(self) -> int:
        """The overlay device the datapath uses now (0 = none)."""
        return int(self._settings_value()["overlay_ifindex"])

    def attach_overlay(self, ifindex: int) -> None:
        """Attach tnd_from_overlay (overlay.o, sharing the pinned maps) to the VXLAN device's ingress
        with a pinned link (a restarted agent calling this again re-points it atomically; a link left
        on a device that was recreated is replaced), then set_overlay(ifindex)."""
        assert self.obj is not None, "load() first"
        if ifindex <= 0:
            raise ValueError(f"overlay ifindex {ifindex}: need the VXLAN device's ifindex")
        if self.overlay_obj is None:
            obj = BpfObject.open(
                paths.bpf_object_dir() / "overlay.o",
                pin_root=self.pin_dir,
                map_sizes={"tnd_events": self.ring_bytes},
            )
            try:
                obj.load()
            except BaseException:
                obj.close()
                raise
            self.overlay_obj = obj
        attach_tc(
            self.overlay_obj.program(abi.PROG_FROM_OVERLAY), ifindex, "ingress", pin_path=self._overlay_link
        ).close()
        self.set_overlay(ifindex)

    def detach_overlay(self) -> None:
        """Back to native routing: stop encapsulating (set_overlay(0)), then detach tnd_from_overlay."""
        self.set_overlay(0)
        pin = self._overlay_link
        if pin.exists():
            try:
                Link.open_pinned(pin).detach()
            except Exception as e:  # the device is gone: only the pin is left
                log.info("detach overlay: %s", e)
            pin.unlink(missing_ok=True)

    @property
    def _overlay_link(self) -> Path:
        return self.link_dir / "overlay-ingress"

    # ---- endpoints -----------------------------------------------------------------------------
    def _link_path(self, ifname: str, direction: str) -> Path:
        return self.link_dir / f"{ifname}-{direction}"

    def attach_endpoint(
        self, ifindex: int, ifname: str, ep_id: int, ipv4: str, ipv6: str, identity: int = 5, flags: int = 0
    ) -> None:
        """Register the endpoint in the map first, then attach (or re-point) both programs."""
        assert self.obj is not None
        info = np.zeros((), dtype=abi.ENDPOINT_INFO_DTYPE)
        info["ep_id"] = ep_id
        info["flags"] = flags
        info["identity"] = identity
        info["ipv4"] = np.frombuffer(ipaddress.IPv4Address(ipv4).packed, dtype=np.uint8)
        info["ipv6"] = np.frombuffer(ipaddress.IPv6Address(ipv6).packed, dtype=np.uint8)
        self.endpoints.update(np.uint32(ifindex), info)
        for direction, prog_name in DIRECTIONS:
            # attach_tc re-points a live pinned link of an earlier agent atomically (no traffic gap)
            link = attach_tc(
                self.obj.program(prog_name), ifindex, direction, pin_path=self._link_path(ifname, direction)
            )
            link.close()

    def set_endpoint_identity(self, ifindex: int, identity: int) -> None:
        self._set_endpoint_field(ifindex, "identity", identity)

    def set_endpoint_flags(self, ifindex: int, flags: int) -> None:
        """abi.EPF_* bits (HTTP visibility); the programs see them on the next packet."""
        self._set_endpoint_field(ifindex, "flags", flags)

    def _set_endpoint_field(self, ifindex: int, field: str, value: int) -> None:
        info = self.endpoints.lookup(np.uint32(ifindex))
        if info is not None and int(info[field]) != value:
            info = info.copy()
            info[field] = value
            self.endpoints.update(np.uint32(ifindex), info)

    def detach_endpoint(self, ifindex: int, ifname: str) -> None:
        for direction, _ in DIRECTIONS:
            pin = self._link_path(ifname, direction)
            if pin.exists():
                try:
                    Link.open_pinned(pin).detach()
                except Exception as e:
                    log.info("detach %s %s: %s", ifname, direction, e)
                pin.unlink(missing_ok=True)
        self.endpoints.delete(np.uint32(ifindex))
        self.flush_ct(ifindex)

    def attach_kind(self, ifname: str) -> str:
        pin = self._link_path(ifname, "ingress")
        return "tcx" if pin.exists() else "tc"

    # ---- conntrack -----------------------------------------------------------------------------
    def ct_entries(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ct.to_arrays()

    def flush_ct(self, ifindex: int | None = None) -> int:
        keys, _ = self.ct.to_arrays()
        n = 0
        for k in keys:
            if ifindex is None or int(k["ifindex"]) == ifindex:
                n += int(self.ct.delete(k))
        return n

    def gc_ct(self) -> int:
        """Delete expired entries (Cilium's agent-side CT GC); returns how many were removed."""
        now = time.monotonic_ns()
        keys, values = self.ct.to_arrays()
        if len(keys) == 0:
            return 0
        expired = np.nonzero(values["expires_ns"] < now)[0]
        removed = 0
        for i in expired:
            removed += int(self.ct.delete(keys[i]))
        return removed

    # ---- counters ------------------------------------------------------------------------------
    def metrics_totals(self) -> list[tuple[int, int, int, int]]:
        """(reason, direction, packets, bytes) for every non-zero slot, summed over CPUs."""
        out = []
        keys, values = self.metrics.to_arrays()
        for k, v in zip(keys, values, strict=True):
            packets = int(np.sum(v["packets"]))
            if packets == 0:
                continue
            idx = int(k)
            out.append((idx // 4, idx % 4, packets, int(np.sum(v["bytes"]))))
        return out

    def lost_events(self) -> int:
        """Records neither ring could take: flow events and HTTP visibility snaps."""
        total = 0
        for m in (self.lost, self.payloads_lost):
            v = m.lookup(np.uint32(0))
            total += int(np.sum(v)) if v is not None else 0
        return total
