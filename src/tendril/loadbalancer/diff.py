"""From one set of load-balancer map entries to another, in an order that never breaks a lookup.

The datapath reads these maps while the agent writes them, one entry at a time. The order makes
every intermediate state consistent:

1. backends that are new or active again, rev-NAT entries, Maglev tables: nothing points at them yet,
   and everything a table or slot will point at exists before it does;
2. per frontend, slots and slot 0: a growing frontend gets its new slots before slot 0's count grows;
   a shrinking one gets its smaller count first, so no lookup reaches a slot about to vanish;
3. stale slots and removed frontends (slot 0 first, so a removed frontend disappears at once);
4. backends becoming terminating: only now does no slot offer them to new connections;
5. tables and rev-NAT entries nothing uses any more, and last the backends, so connections already
   on them keep finding their address until the very end.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tendril.loadbalancer.entries import (
    BACKEND_TERMINATING,
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_REVNAT,
    MAP_SERVICES,
    BackendEntry,
    L3n4Addr,
    LBKey,
    LBValue,
    RevNatEntry,
)

UPSERT = "upsert"
DELETE = "delete"


@dataclass
class LBEntries:
    """The content of the four load-balancer maps (what the kernel holds, or should)."""

    services: dict[LBKey, LBValue] = field(default_factory=dict)
    backends: dict[int, BackendEntry] = field(default_factory=dict)
    revnat: dict[int, RevNatEntry] = field(default_factory=dict)
    maglev: Mapping[int, np.ndarray] = field(default_factory=dict)  # rev_nat_id -> uint32[M] backend IDs


@dataclass(frozen=True)
class MapOp:
    """One map operation: `map` is the C map name, `key`/`value` as in `entries` (value None for
    deletes; for tnd_lb_maglev the value is the inner array's content)."""

    map: str
    op: str
    key: Any
    value: Any = None


@dataclass(frozen=True)
class LBDiff:
    """Operations to apply in order (see the module docstring for why the order is safe)."""

    ops: tuple[MapOp, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[MapOp]:
        return iter(self.ops)

    def upserts(self, map_name: str) -> dict[Any, Any]:
        return {o.key: o.value for o in self.ops if o.map == map_name and o.op == UPSERT}

    def deletes(self, map_name: str) -> list[Any]:
        return [o.key for o in self.ops if o.map == map_name and o.op == DELETE]

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per map and operation, for logs and metrics."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {UPSERT: 0, DELETE: 0})
        for o in self.ops:
            out[o.map][o.op] += 1
        return dict(out)


def _table_unchanged(old: Mapping[int, np.ndarray], new: Mapping[int, np.ndarray], rid: int) -> bool:
    """Compare by spec when both sides can (no table is built), else by content (map dumps)."""
    if rid not in old:
        return False
    old_spec, new_spec = getattr(old, "spec", None), getattr(new, "spec", None)
    if old_spec is not None and new_spec is not None:
        return old_spec(rid) == new_spec(rid)
    a, b = old[rid], new[rid]
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _by_frontend(services: Mapping[LBKey, LBValue]) -> dict[L3n4Addr, dict[int, LBValue]]:
    out: dict[L3n4Addr, dict[int, LBValue]] = defaultdict(dict)
    for key, value in services.items():
        out[key.frontend][key.slot] = value
    return out


def _frontend_ops(fe: L3n4Addr, old: dict[int, LBValue], new: dict[int, LBValue]) -> list[MapOp]:
    master_new = new.get(0)
    master_old = old.get(0)
    slots = [
        MapOp(MAP_SERVICES, UPSERT, LBKey.of(fe, s), v)
        for s, v in sorted(new.items())
        if s != 0 and old.get(s) != v
    ]
    master = (
        []
        if master_new is None or master_new == master_old
        else [MapOp(MAP_SERVICES, UPSERT, LBKey.of(fe, 0), master_new)]
    )
    old_count = master_old.count if master_old is not None else 0
    new_count = master_new.count if master_new is not None else 0
    return slots + master if new_count >= old_count else master + slots


def diff_entries(old: LBEntries, new: LBEntries) -> LBDiff:
    """The operations turning `old` into `new` (an empty LBEntries as `old` gives a full load)."""
    ops: list[MapOp] = []
    demoted: list[MapOp] = []
    for bid, be in sorted(new.backends.items()):
        before = old.backends.get(bid)
        if before == be:
            continue
        op = MapOp(MAP_BACKENDS, UPSERT, bid, be)
        if be.state == BACKEND_TERMINATING and before is not None and before.address == be.address:
            demoted.append(op)
        else:
            ops.append(op)
    ops += [
        MapOp(MAP_REVNAT, UPSERT, rid, rn)
        for rid, rn in sorted(new.revnat.items())
        if old.revnat.get(rid) != rn
    ]
    ops += [
        MapOp(MAP_MAGLEV, UPSERT, rid, new.maglev[rid])
        for rid in sorted(new.maglev)
        if not _table_unchanged(old.maglev, new.maglev, rid)
    ]
    old_fe, new_fe = _by_frontend(old.services), _by_frontend(new.services)
    for fe in sorted(new_fe, key=L3n4Addr.sort_key):
        ops += _frontend_ops(fe, old_fe.get(fe, {}), new_fe[fe])
    gone = [k for k in old.services if k not in new.services]
    gone.sort(key=lambda k: (k.slot != 0 or k.frontend in new_fe, k.sort_key()))
    ops += [MapOp(MAP_SERVICES, DELETE, k) for k in gone]
    ops += demoted
    ops += [MapOp(MAP_MAGLEV, DELETE, rid) for rid in sorted(old.maglev) if rid not in new.maglev]
    ops += [MapOp(MAP_REVNAT, DELETE, rid) for rid in sorted(old.revnat) if rid not in new.revnat]
    ops += [MapOp(MAP_BACKENDS, DELETE, bid) for bid in sorted(old.backends) if bid not in new.backends]
    return LBDiff(tuple(ops))
