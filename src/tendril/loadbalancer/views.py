"""Text views of the load balancer, in the layouts Cilium users know (pure: state in, text out).

- `format_service_list(state)`: `cilium-dbg service list` (the agent's view, with backend states);
- `format_bpf_lb_list(entries)`: `cilium-dbg bpf lb list` (what tnd_lb_services holds, slot by slot);
- `format_bpf_lb_revnat(entries)`: `cilium-dbg bpf lb list --revnat`;
- `format_get_services(records, now)`: `kubectl get services`.

The bpf views take `LBEntries`, so the CLI can feed them from map dumps (the truth) or from
`LBState.entries()` (the intent) alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tendril.cli.tabwriter import render
from tendril.loadbalancer.diff import LBEntries
from tendril.loadbalancer.entries import (
    BackendEntry,
    L3n4Addr,
    LBKey,
    LBValue,
    SvcFlag,
    host_port,
    zero_address,
)
from tendril.loadbalancer.manager import ServiceRecord
from tendril.loadbalancer.state import LBState


def _backend_lines(ids: Iterable[int], backends: Mapping[int, BackendEntry], start: int) -> list[str]:
    out = []
    for n, bid in enumerate(ids, start=start):
        be = backends.get(bid)
        out.append(f"{n} => {be.address} ({be.state_name})" if be else f"{n} => backend {bid} not found")
    return out


def format_service_list(state: LBState) -> str:
    """ID (the rev_nat_id), Frontend, Service Type, Backend: active backends in slot order, then
    terminating ones (which still serve their open connections)."""
    rows = [["ID", "Frontend", "Service Type", "Backend"]]
    for fe in state.frontends:
        lines = _backend_lines(fe.active, state.backends, 1)
        lines += _backend_lines(fe.terminating, state.backends, len(fe.active) + 1)
        rows.append([str(fe.rev_nat_id), str(fe.address), fe.type, "\n".join(lines)])
    return render(rows)


def service_list_json(state: LBState) -> list[dict[str, Any]]:
    """The same as data (`tendril service list -o json`)."""
    out = []
    for fe in state.frontends:
        backends = []
        for bid in (*fe.active, *fe.terminating):
            be = state.backends.get(bid)
            backends.append(
                {
                    "id": bid,
                    "address": str(be.address) if be else None,
                    "state": be.state_name if be else "unknown",
                }
            )
        out.append(
            {
                "id": fe.rev_nat_id,
                "frontend": str(fe.address),
                "type": fe.type,
                "service": fe.service,
                "portName": fe.port_name,
                "flags": flags_text(fe.flags, fe.address.is_zero).split(", "),
                "sessionAffinityTimeout": fe.affinity_timeout_s,
                "maglev": fe.maglev,
                "backends": backends,
            }
        )
    return out


def flags_text(flags: int, zero_address_frontend: bool) -> str:
    """Cilium's service-flags wording: the type, modifiers, and "non-routable" for ClusterIPs and the
    any-address NodePort frontend (neither can be reached from outside the cluster as such)."""
    f = SvcFlag(flags)
    parts = ["NodePort" if f & SvcFlag.NODEPORT else "ClusterIP"]
    if f & SvcFlag.AFFINITY:
        parts.append("sessionAffinity")
    if f & SvcFlag.MAGLEV:
        parts.append("maglev")
    if not f & SvcFlag.NODEPORT or zero_address_frontend:
        parts.append("non-routable")
    return ", ".join(parts)


def _slot_text(key: LBKey, value: LBValue, backends: Mapping[int, BackendEntry]) -> str:
    if key.slot == 0:
        none = host_port(zero_address(key.family), 0)
        flags = flags_text(value.flags, key.frontend.is_zero)
        return f"{none} ({value.rev_nat_id}) (0) [{flags}]"
    be = backends.get(value.backend_id)
    target = str(be.address) if be is not None else f"backend {value.backend_id} not found"
    return f"{target} ({value.rev_nat_id}) ({key.slot})"


def format_bpf_lb_list(entries: LBEntries) -> str:
    """SERVICE ADDRESS, BACKEND ADDRESS (REVNAT_ID) (SLOT): slot 0 (the master entry, `0.0.0.0:0`
    with the flags) first, then each slot's backend."""
    by_frontend: dict[L3n4Addr, list[tuple[LBKey, LBValue]]] = {}
    for key, value in entries.services.items():
        by_frontend.setdefault(key.frontend, []).append((key, value))
    rows = [["SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"]]
    for fe in sorted(by_frontend, key=L3n4Addr.sort_key):
        slots = sorted(by_frontend[fe], key=lambda kv: kv[0].slot)
        rows.append([str(fe), "\n".join(_slot_text(k, v, entries.backends) for k, v in slots)])
    return render(rows)


def format_bpf_lb_revnat(entries: LBEntries) -> str:
    """`bpf lb list --revnat`: ID and the frontend replies are translated back to (Cilium keeps the
    slot listing's header here)."""
    rows = [["ID", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"]]
    rows += [[str(rid), str(rn)] for rid, rn in sorted(entries.revnat.items())]
    return render(rows)


def format_bpf_lb_backends(entries: LBEntries) -> str:
    """`bpf lb list --backends`: ID, address and state of each backend entry."""
    rows = [["ID", "BACKEND ADDRESS", "STATE"]]
    for bid, be in sorted(entries.backends.items()):
        rows.append([str(bid), str(be.address), be.state_name])
    return render(rows)


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _ports_text(record: ServiceRecord) -> str:
    parts = []
    for p in record.service.spec.ports:
        node_port = record.allocation.node_ports.get(p.label)
        parts.append(f"{p.port}:{node_port}/{p.protocol}" if node_port else p.label)
    return ",".join(parts) or "<none>"


def format_get_services(records: Iterable[ServiceRecord], now: float, all_namespaces: bool = False) -> str:
    """NAME, TYPE, CLUSTER-IP (the primary one; None when headless), EXTERNAL-IP, PORT(S), AGE."""
    head = ["NAMESPACE"] if all_namespaces else []
    rows = [[*head, "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]]
    for r in records:
        svc = r.service
        ip = "None" if svc.headless else (r.allocation.cluster_ips or ("<pending>",))[0]
        ns = [svc.namespace] if all_namespaces else []
        rows.append([*ns, svc.name, svc.type, ip, "<none>", _ports_text(r), _age(now - r.created)])
    return render(rows)
