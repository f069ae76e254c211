"""Service load balancing (Cilium's kube-proxy replacement), the pure part: Services, allocation,
Maglev, the per-frontend map entries and their diffs, and the CLI views.

Public API (what the agent and the CLI use):

- `parse_service(doc, source, index) -> Service`, `is_service_document(doc)`,
  `parse_service_documents(text, source)`: strict v1 Service validation; `ServiceValidationError`
  names file, Service and field. `check_target_ports(svc, pods, source)`: optional apply-time
  "unknown targetPort name" rejection (only when some selected pod exists).
- `ServiceAllocator(cidrs=DEFAULT_SERVICE_CIDRS, node_port_range=(30000, 32767))`: `allocate`,
  `allocate_all` (atomic per file), `release`, `get`, `to_dict`/`from_dict` -> `Allocation`.
- `ServiceManager(allocator, algorithm="random"|"maglev", maglev_table_size=16381, maglev_seed=...)`:
  `apply(services, source, now)`, `delete(ns, name)`, `get`, `list`, `sync(pods, node_addresses)
  -> LBDiff` (= `plan` + `commit`), `resync(actual_entries) -> LBDiff`, `state -> LBState`,
  `revision`, `to_dict`/`from_dict`.
- `PodInfo(namespace, name, labels, ready, ipv4, ipv6, ports=(PodPort(port, name, protocol),),
  terminating)`: the agent's pods as the load balancer sees them.
- `LBDiff`: `MapOp(map, op, key, value)` in a safe order; maps `tnd_lb_backends` (int ->
  BackendEntry), `tnd_lb_revnat` (int -> RevNatEntry), `tnd_lb_maglev` (int -> uint32[M]),
  `tnd_lb_services` (LBKey -> LBValue).
- `build_table(backends, m, seed) -> MaglevTable`, `MaglevCache`, `is_prime`.
- views: `format_service_list`, `service_list_json`, `format_bpf_lb_list`, `format_bpf_lb_revnat`,
  `format_bpf_lb_backends`, `format_get_services` (import from `tendril.loadbalancer.views`).
"""

from tendril.loadbalancer.allocator import DEFAULT_SERVICE_CIDRS, Allocation, ServiceAllocator
from tendril.loadbalancer.diff import DELETE, UPSERT, LBDiff, LBEntries, MapOp, diff_entries
from tendril.loadbalancer.endpoints import PodInfo, PodPort, check_target_ports
from tendril.loadbalancer.entries import (
    BACKEND_ACTIVE,
    BACKEND_TERMINATING,
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_REVNAT,
    MAP_SERVICES,
    PROTO_NUMBERS,
    BackendEntry,
    L3n4Addr,
    LBKey,
    LBValue,
    RevNatEntry,
    SvcFlag,
)
from tendril.loadbalancer.errors import ServiceAllocationError, ServiceCapacityError, ServiceValidationError
from tendril.loadbalancer.maglev import (
    DEFAULT_TABLE_SIZE,
    MaglevCache,
    MaglevTable,
    MaglevTables,
    build_table,
    is_prime,
)
from tendril.loadbalancer.manager import Plan, ServiceManager, ServiceRecord
from tendril.loadbalancer.model import (
    Service,
    is_service_document,
    parse_service,
    parse_service_documents,
)
from tendril.loadbalancer.state import Frontend, LBConfig, LBState, compute_state

__all__ = [
    "BACKEND_ACTIVE",
    "BACKEND_TERMINATING",
    "DEFAULT_SERVICE_CIDRS",
    "DEFAULT_TABLE_SIZE",
    "DELETE",
    "MAP_BACKENDS",
    "MAP_MAGLEV",
    "MAP_REVNAT",
    "MAP_SERVICES",
    "PROTO_NUMBERS",
    "UPSERT",
    "Allocation",
    "BackendEntry",
    "Frontend",
    "L3n4Addr",
    "LBConfig",
    "LBDiff",
    "LBEntries",
    "LBKey",
    "LBState",
    "LBValue",
    "MaglevCache",
    "MaglevTable",
    "MaglevTables",
    "MapOp",
    "Plan",
    "PodInfo",
    "PodPort",
    "RevNatEntry",
    "Service",
    "ServiceAllocationError",
    "ServiceAllocator",
    "ServiceCapacityError",
    "ServiceManager",
    "ServiceRecord",
    "ServiceValidationError",
    "SvcFlag",
    "build_table",
    "check_target_ports",
    "compute_state",
    "diff_entries",
    "is_prime",
    "is_service_document",
    "parse_service",
    "parse_service_documents",
]
