"""Stable numeric IDs for names (frontends -> rev_nat_id, backends -> backend_id).

Why IDs are kept while their name exists and handed out round-robin afterwards: the datapath's
conntrack, NAT, socket rev-NAT and affinity entries remember these numbers. Keeping an ID for as long
as its frontend/backend exists keeps those entries valid across updates; not reusing a freed ID
right away (the counter moves on and wraps only at the end of the range) keeps a stale affinity or
NAT entry from pointing at an unrelated new backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class IdAllocator:
    """name -> ID in 1..max_id (0 is "none" in the ABI)."""

    def __init__(self, max_id: int, ids: Mapping[str, int] | None = None, next_id: int = 1) -> None:
        self.max_id = max_id
        self._ids: dict[str, int] = dict(ids or {})
        self._used: set[int] = set(self._ids.values())
        self.next_id = next_id if 1 <= next_id <= max_id else 1

    def __contains__(self, name: object) -> bool:
        return name in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, name: str) -> int | None:
        return self._ids.get(name)

    def ids(self) -> dict[str, int]:
        return dict(self._ids)

    def allocate(self, name: str) -> int:
        """The name's ID, allocating the next free one if it has none; OverflowError when full."""
        got = self._ids.get(name)
        if got is not None:
            return got
        if len(self._used) >= self.max_id:
            raise OverflowError(f"all {self.max_id} IDs are in use")
        n = self.next_id
        while n in self._used:
            n = n + 1 if n < self.max_id else 1
        self._ids[name] = n
        self._used.add(n)
        self.next_id = n + 1 if n < self.max_id else 1
        return n

    def retain(self, names: Iterable[str]) -> list[str]:
        """Release every name not in `names`; returns the released names."""
        keep = set(names)
        gone = [n for n in self._ids if n not in keep]
        for n in gone:
            self._used.discard(self._ids.pop(n))
        return gone

    def copy(self) -> IdAllocator:
        return IdAllocator(self.max_id, self._ids, self.next_id)

    def to_dict(self) -> dict[str, Any]:
        return {"next": self.next_id, "ids": dict(sorted(self._ids.items(), key=lambda kv: kv[1]))}

    @classmethod
    def from_dict(cls, max_id: int, d: Mapping[str, Any]) -> IdAllocator:
        return cls(max_id, {k: int(v) for k, v in d.get("ids", {}).items()}, int(d.get("next", 1)))
