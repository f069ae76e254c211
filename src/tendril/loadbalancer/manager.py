"""The agent's service manager: Services in force, their allocations, IDs and the last state.

Pure (no kernel, no clock, no files): the agent applies and deletes Services, calls `sync()` with
its current pods and node addresses whenever any of them changes, applies the returned `LBDiff` to
the maps in order, and persists `to_dict()`. IDs and allocations survive a restart through
`from_dict`, so a restarted agent computes the same entries the kernel already holds and its first
diff is empty; `resync(actual)` compares against map dumps instead when the maps may have drifted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tendril.common.errors import NotFoundError
from tendril.loadbalancer.allocator import Allocation, ServiceAllocator
from tendril.loadbalancer.diff import LBDiff, LBEntries, diff_entries
from tendril.loadbalancer.endpoints import PodInfo
from tendril.loadbalancer.entries import BACKEND_ID_MAX, REVNAT_ID_MAX, BackendEntry, L3n4Addr
from tendril.loadbalancer.ids import IdAllocator
from tendril.loadbalancer.maglev import DEFAULT_SEED, DEFAULT_TABLE_SIZE, MaglevCache, MaglevTables
from tendril.loadbalancer.model import LB_ALGORITHMS, Service, parse_service
from tendril.loadbalancer.state import Frontend, LBConfig, LBState, compute_state, maglev_specs


@dataclass(frozen=True)
class ServiceRecord:
    """A Service in force with what was allocated for it; `created` is the caller's timestamp."""

    service: Service
    allocation: Allocation
    created: float = 0.0

    @property
    def key(self) -> str:
        return self.service.key


@dataclass(frozen=True)
class Plan:
    """A computed, not yet adopted, state (see ServiceManager.plan / commit)."""

    state: LBState
    diff: LBDiff
    revnat_ids: IdAllocator
    backend_ids: IdAllocator


class ServiceManager:
    def __init__(
        self,
        allocator: ServiceAllocator | None = None,
        *,
        algorithm: str = "random",
        maglev_table_size: int = DEFAULT_TABLE_SIZE,
        maglev_seed: bytes = DEFAULT_SEED,
    ) -> None:
        if algorithm not in LB_ALGORITHMS:
            raise ValueError(f"unknown load-balancing algorithm {algorithm!r} ({', '.join(LB_ALGORITHMS)})")
        self.allocator = allocator or ServiceAllocator()
        self.config = LBConfig(algorithm, MaglevCache(maglev_table_size, maglev_seed))
        self._records: dict[str, ServiceRecord] = {}
        self._revnat_ids = IdAllocator(REVNAT_ID_MAX)
        self._backend_ids = IdAllocator(BACKEND_ID_MAX)
        self._state = LBState()
        self.revision = 0  # bumps on every Service change: the agent's cue to sync

    # ---- Services ---------------------------------------------------------------------------------
    def apply(
        self, services: Iterable[Service], source: str | None = None, now: float = 0.0
    ) -> list[tuple[str, ServiceRecord]]:
        """Add or update Services (one file: all or none, as allocation is atomic); returns
        kubectl-style ("created" | "configured" | "unchanged", record) per Service."""
        services = list(services)
        allocations = self.allocator.allocate_all(services, source)
        out = []
        for svc, alloc in zip(services, allocations, strict=True):
            old = self._records.get(svc.key)
            if old is not None and old.service.document() == svc.document() and old.allocation == alloc:
                out.append(("unchanged", old))
                continue
            record = ServiceRecord(svc, alloc, old.created if old is not None else now)
            self._records[svc.key] = record
            out.append(("configured" if old is not None else "created", record))
        if any(action != "unchanged" for action, _ in out):
            self.revision += 1
        return out

    def delete(self, namespace: str | None, name: str) -> ServiceRecord:
        key = f"{namespace or 'default'}/{name}"
        record = self._records.pop(key, None)
        if record is None:
            raise NotFoundError(f'services "{name}" not found in namespace {namespace or "default"!r}')
        self.allocator.release(key)
        self.revision += 1
        return record

    def get(self, namespace: str | None, name: str) -> ServiceRecord | None:
        return self._records.get(f"{namespace or 'default'}/{name}")

    def list(self, namespace: str | None = None) -> list[ServiceRecord]:
        return [
            r
            for _, r in sorted(self._records.items())
            if namespace is None or r.service.namespace == namespace
        ]

    # ---- load-balancer state ----------------------------------------------------------------------
    @property
    def state(self) -> LBState:
        """The last committed state (what the maps hold once the last diff was applied)."""
        return self._state

    def plan(self, pods: Iterable[PodInfo], node_addresses: Iterable[str]) -> Plan:
        """The state for these pods and node addresses and the diff to it; changes nothing."""
        revnat, backend = self._revnat_ids.copy(), self._backend_ids.copy()
        pairs = [(r.service, r.allocation) for r in self._records.values()]
        state = compute_state(pairs, pods, node_addresses, revnat, backend, self.config)
        return Plan(state, diff_entries(self._state.entries(), state.entries()), revnat, backend)

    def commit(self, plan: Plan) -> None:
        """Adopt a planned state (after its diff was applied)."""
        self._state = plan.state
        self._revnat_ids, self._backend_ids = plan.revnat_ids.copy(), plan.backend_ids.copy()

    def sync(self, pods: Iterable[PodInfo], node_addresses: Iterable[str]) -> LBDiff:
        """plan + commit: the operations to apply, in order."""
        plan = self.plan(pods, node_addresses)
        self.commit(plan)
        return plan.diff

    def resync(self, actual: LBEntries) -> LBDiff:
        """Operations turning what the maps really hold (dumped by the agent) into the committed state."""
        return diff_entries(actual, self._state.entries())

    # ---- persistence ----------------------------------------------------------------------------
    def _maglev_fingerprint(self) -> str:
        seed = hashlib.sha256(self.config.maglev.seed).hexdigest()[:16]
        return f"{self.config.maglev.m}/{seed}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.config.algorithm,
            "maglev": self._maglev_fingerprint(),
            "revision": self.revision,
            "allocator": self.allocator.to_dict(),
            "services": [
                {"document": r.service.document(), "created": r.created} for r in self._records.values()
            ],
            "revnatIds": self._revnat_ids.to_dict(),
            "backendIds": self._backend_ids.to_dict(),
            "frontends": [_frontend_to_dict(f) for f in self._state.frontends],
            "backends": {str(bid): [str(b.address), b.state] for bid, b in self._state.backends.items()},
        }

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        algorithm: str | None = None,
        maglev_table_size: int = DEFAULT_TABLE_SIZE,
        maglev_seed: bytes = DEFAULT_SEED,
    ) -> ServiceManager:
        """Restore; the Maglev settings are the agent's current ones (a change recomputes tables)."""
        out = cls(
            ServiceAllocator.from_dict(d.get("allocator", {})),
            algorithm=algorithm or d.get("algorithm", "random"),
            maglev_table_size=maglev_table_size,
            maglev_seed=maglev_seed,
        )
        out.revision = int(d.get("revision", 0))
        for item in d.get("services", []):
            svc = parse_service(item["document"], "<saved state>")
            alloc = out.allocator.get(svc.key) or Allocation()
            out._records[svc.key] = ServiceRecord(svc, alloc, float(item.get("created", 0.0)))
        out._revnat_ids = IdAllocator.from_dict(REVNAT_ID_MAX, d.get("revnatIds", {}))
        out._backend_ids = IdAllocator.from_dict(BACKEND_ID_MAX, d.get("backendIds", {}))
        backends = {
            int(bid): BackendEntry.of(L3n4Addr.parse(name), int(st))
            for bid, (name, st) in d.get("backends", {}).items()
        }
        frontends = tuple(_frontend_from_dict(f) for f in d.get("frontends", []))
        maglev: Mapping[int, Any] = {}  # another M or seed than the saved one: every table is reloaded
        if d.get("maglev") == out._maglev_fingerprint():
            names = {bid: str(be.address) for bid, be in backends.items()}
            maglev = MaglevTables(out.config.maglev, maglev_specs(frontends, names))
        out._state = LBState(frontends, backends, maglev)
        return out


def _frontend_to_dict(f: Frontend) -> dict[str, Any]:
    return {
        "address": str(f.address),
        "revNatId": f.rev_nat_id,
        "service": f.service,
        "portName": f.port_name,
        "type": f.type,
        "flags": f.flags,
        "affinityTimeout": f.affinity_timeout_s,
        "active": list(f.active),
        "terminating": list(f.terminating),
    }


def _frontend_from_dict(d: Mapping[str, Any]) -> Frontend:
    return Frontend(
        L3n4Addr.parse(d["address"]),
        int(d["revNatId"]),
        d["service"],
        d.get("portName", ""),
        d["type"],
        int(d["flags"]),
        int(d.get("affinityTimeout", 0)),
        tuple(d.get("active", ())),
        tuple(d.get("terminating", ())),
    )
