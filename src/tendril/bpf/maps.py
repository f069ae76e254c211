"""BPF maps: raw bytes access (:class:`Map`), numpy-typed access (:class:`TypedMap`), and maps
created from Python (:func:`create_map`), e.g. the per-endpoint policy maps put into ``tnd_policy``.

Why numpy structured dtypes: the agent reads whole maps (conntrack GC, metrics) and decodes ring
buffer batches; a structured array decodes thousands of entries with one view instead of one
``struct.unpack`` per entry, and the dtypes in :mod:`tendril.bpf.abi` double as the ABI spec.

Map-in-map (ARRAY_OF_MAPS / HASH_OF_MAPS): an update takes the inner map's fd as the 4-byte value
(:meth:`Map.set_inner`), a lookup returns the inner map's ID (:meth:`Map.inner_map` opens it). The
update is one atomic pointer swap: a program sees the old inner map or the new one, never a mix,
which is how a whole new policy replaces the old one.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tendril.bpf import libbpf as lb
from tendril.bpf.errors import BpfError, privilege_error_for


def _buf(data: bytes | bytearray | memoryview | np.ndarray | np.void, size: int, what: str):
    """Return a ctypes-passable buffer of exactly ``size`` bytes holding ``data``."""
    if isinstance(data, np.void | np.ndarray):
        data = data.tobytes()
    data = bytes(data)
    if len(data) != size:
        raise ValueError(f"{what}: expected {size} bytes, got {len(data)}")
    return ctypes.create_string_buffer(data, size)


class Map:
    """A BPF map fd plus the kernel's description of it (type, key/value size, max_entries).

    The description is queried from the kernel (bpf_obj_get_info_by_fd) rather than trusted from the
    caller, so a map reopened from a pin after an upgrade is still accessed with the right sizes.
    """

    def __init__(self, fd: int, name: str | None = None, *, owns_fd: bool = True) -> None:
        self.fd = fd
        self._owns_fd = owns_fd
        info = lb.bpf_map_info()
        ln = ctypes.c_uint32(ctypes.sizeof(info))
        lb.check(lb.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(ln)), "map info")
        self.id: int = info.id
        self.map_type: int = info.type
        self.key_size: int = info.key_size
        self.value_size: int = info.value_size
        self.max_entries: int = info.max_entries
        self.map_flags: int = info.map_flags
        self.name: str = name or info.name.decode()
        self.percpu: bool = self.map_type in lb.PERCPU_MAP_TYPES
        self.ncpus: int = lb.num_possible_cpus() if self.percpu else 1
        # The kernel rounds per-CPU value slots up to 8 bytes.
        self.value_stride: int = (self.value_size + 7) & ~7 if self.percpu else self.value_size
        self.lookup_size: int = self.value_stride * self.ncpus
        self._batch_ok: bool | None = None

    # ---- lifecycle ----

    @classmethod
    def open_by_id(cls, map_id: int) -> Map | None:
        """Open a map by its kernel ID (bpf_map_get_fd_by_id); None if no such map exists (any more)."""
        rc = lb.bpf_map_get_fd_by_id(map_id)
        if rc == -errno.ENOENT:
            return None
        if rc < 0:
            raise privilege_error_for(-rc, f"opening map id {map_id}") or BpfError(
                -rc, f"bpf_map_get_fd_by_id({map_id})"
            )
        return cls(rc)

    @classmethod
    def open_pinned(cls, path: str | Path) -> Map:
        """Open a map pinned in bpffs (e.g. after an agent restart)."""
        rc = lb.bpf_obj_get(os.fsencode(path))
        if rc < 0:
            err = -rc
            raise privilege_error_for(err, f"opening pinned map {path}") or BpfError(
                err, f"bpf_obj_get({path})"
            )
        return cls(rc)

    def pin(self, path: str | Path) -> None:
        """Pin the map at ``path`` (bpffs) so it outlives this process."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        lb.check(lb.bpf_obj_pin(self.fd, os.fsencode(path)), f"bpf_obj_pin({path})")

    def close(self) -> None:
        """Close our fd (the map lives on while pinned or referenced by programs)."""
        if self.fd >= 0 and self._owns_fd:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Map({self.name!r}, fd={self.fd}, type={self.map_type}, key={self.key_size}, "
            f"value={self.value_size}, max_entries={self.max_entries})"
        )

    # ---- raw bytes ops ----

    def lookup(self, key: bytes) -> bytes | None:
        """Value bytes for key, or None. Per-CPU maps return ncpus * value_stride bytes."""
        k = _buf(key, self.key_size, "key")
        v = ctypes.create_string_buffer(self.lookup_size)
        rc = lb.bpf_map_lookup_elem(self.fd, k, v)
        if rc == -errno.ENOENT:
            return None
        lb.check(rc, f"lookup in {self.name}")
        return v.raw

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        """Insert/replace (flags: BPF_ANY / BPF_NOEXIST / BPF_EXIST). Per-CPU: all CPUs' values."""
        k = _buf(key, self.key_size, "key")
        v = _buf(value, self.lookup_size, "value")
        lb.check(lb.bpf_map_update_elem(self.fd, k, v, flags), f"update in {self.name}")

    def delete(self, key: bytes) -> bool:
        """Delete key; False if it was not there."""
        k = _buf(key, self.key_size, "key")
        rc = lb.bpf_map_delete_elem(self.fd, k)
        if rc == -errno.ENOENT:
            return False
        lb.check(rc, f"delete in {self.name}")
        return True

    # ---- map-in-map ----

    def set_inner(self, key: bytes | int, inner: Map | int, flags: int = 0) -> None:
        """Outer map-in-map: point ``key`` at ``inner`` (a Map or fd), atomically replacing the old one.

        The kernel checks that inner has the template's type, key/value size and flags (EINVAL
        otherwise). Integer keys are u32 (array of maps); the outer map keeps the inner map alive, so
        the caller may close its fd afterwards.
        """
        self._require_map_in_map("set_inner")
        fd = inner.fd if isinstance(inner, Map) else int(inner)
        k = key.to_bytes(4, "little") if isinstance(key, int) else key
        self.update(k, fd.to_bytes(4, "little"), flags)

    def inner_map(self, key: bytes | int) -> Map | None:
        """Outer map-in-map: the inner map at ``key`` opened by ID (a new fd the caller closes), or None.

        The lookup returns the inner map's ID; if that map is freed before we open it (replaced and
        released concurrently), the lookup is retried.
        """
        self._require_map_in_map("inner_map")
        k = key.to_bytes(4, "little") if isinstance(key, int) else key
        for _ in range(4):
            raw = self.lookup(k)
            if raw is None:
                return None
            m = Map.open_by_id(int.from_bytes(raw[:4], "little"))
            if m is not None:
                return m
        return None

    def _require_map_in_map(self, what: str) -> None:
        if self.map_type not in lb.MAP_IN_MAP_TYPES:
            raise TypeError(f"{what}: {self.name} is not a map-in-map (type {self.map_type})")

    def keys(self) -> Iterator[bytes]:
        """Iterate keys with get_next_key. Concurrent deletes may restart iteration (kernel rule)."""
        cur = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            rc = lb.bpf_map_get_next_key(self.fd, cur, nxt)
            if rc == -errno.ENOENT:
                return
            lb.check(rc, f"get_next_key in {self.name}")
            key = nxt.raw
            yield key
            cur = ctypes.create_string_buffer(key, self.key_size)

    def items_raw(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) bytes pairs; entries deleted during iteration are skipped."""
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def dump_raw(self) -> tuple[bytes, bytes, int]:
        """All entries as (keys blob, values blob, count), using batch lookup when supported."""
        if self._batch_ok is not False and self.map_type not in (lb.BPF_MAP_TYPE_RINGBUF,):
            try:
                return self._dump_batch()
            except BpfError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP):
                    raise
                self._batch_ok = False
        ks, vs, n = bytearray(), bytearray(), 0
        for k, v in self.items_raw():
            ks += k
            vs += v
            n += 1
        return bytes(ks), bytes(vs), n

    def _dump_batch(self) -> tuple[bytes, bytes, int]:
        chunk = max(1, min(self.max_entries, 4096))
        keys = ctypes.create_string_buffer(self.key_size * chunk)
        vals = ctypes.create_string_buffer(self.lookup_size * chunk)
        in_batch = ctypes.create_string_buffer(max(self.key_size, 8))
        out_batch = ctypes.create_string_buffer(max(self.key_size, 8))
        opts = lb.bpf_map_batch_opts(sz=ctypes.sizeof(lb.bpf_map_batch_opts))
        kout, vout, total = bytearray(), bytearray(), 0
        first = True
        while True:
            count = ctypes.c_uint32(chunk)
            rc = lb.bpf_map_lookup_batch(
                self.fd,
                None if first else in_batch,
                out_batch,
                keys,
                vals,
                ctypes.byref(count),
                ctypes.byref(opts),
            )
            n = count.value
            if rc < 0 and rc != -errno.ENOENT:
                if rc == -errno.ENOSPC and n == 0:
                    # A hash bucket larger than chunk: grow and retry.
                    chunk *= 2
                    keys = ctypes.create_string_buffer(self.key_size * chunk)
                    vals = ctypes.create_string_buffer(self.lookup_size * chunk)
                    continue
                lb.check(rc, f"lookup_batch in {self.name}")
            kout += keys.raw[: n * self.key_size]
            vout += vals.raw[: n * self.lookup_size]
            total += n
            if rc == -errno.ENOENT:
                break
            ctypes.memmove(in_batch, out_batch, len(out_batch))
            first = False
        self._batch_ok = True
        return bytes(kout), bytes(vout), total


_ENOTSUPP = 524  # kernel-internal errno some map types return for batch ops
_MAP_NAME = re.compile(r"[A-Za-z0-9_.]{0,15}")  # BPF_OBJ_NAME_LEN 16 with the NUL


def create_map(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    flags: int = 0,
    name: str = "",
    inner_map_fd: int | None = None,
) -> Map:
    """Create a map (bpf_map_create) owned by the returned Map: it lives until its fd is closed and
    nothing else (a pin, an outer map, a program) references it.

    flags: BPF_F_* map_flags (LPM tries need BPF_F_NO_PREALLOC). inner_map_fd: for a map-in-map,
    a map whose type/sizes/flags every inner map must have (only its shape is used).
    """
    if not _MAP_NAME.fullmatch(name):
        raise ValueError(f"map name {name!r}: at most 15 characters of [A-Za-z0-9_.]")
    opts = lb.bpf_map_create_opts(sz=ctypes.sizeof(lb.bpf_map_create_opts))
    opts.map_flags = flags
    if inner_map_fd is not None:
        opts.inner_map_fd = inner_map_fd
    name_b = name.encode() or None
    rc = lb.bpf_map_create(map_type, name_b, key_size, value_size, max_entries, ctypes.byref(opts))
    if rc < 0:
        what = f"creating map {name or '(unnamed)'} (type {map_type}, key {key_size}, value {value_size})"
        raise privilege_error_for(-rc, what) or BpfError(-rc, f"bpf_map_create: {what}")
    return Map(rc, name or None)


def create_policy_map(name: str = "", max_entries: int | None = None) -> Map:
    """A new, empty per-endpoint policy map (LPM trie tnd_policy_key -> tnd_policy_value) shaped
    like tnd_policy's inner-map template, ready to fill and swap in with ``set_inner``."""
    from tendril.bpf import abi

    return create_map(
        lb.BPF_MAP_TYPE_LPM_TRIE,
        abi.POLICY_KEY_DTYPE.itemsize,
        abi.POLICY_VALUE_DTYPE.itemsize,
        abi.POLICY_MAX_ENTRIES if max_entries is None else max_entries,
        flags=lb.BPF_F_NO_PREALLOC,
        name=name,
    )


KeyLike = bytes | np.void | np.ndarray | int


class TypedMap:
    """Map access through numpy dtypes for key and value.

    Keys and values may be given as bytes or numpy structured scalars (np.void); plain ints are
    accepted for integer keys. Per-CPU maps return values of shape (ncpus,) of value_dtype.
    """

    def __init__(self, map: Map, key_dtype: np.dtype, value_dtype: np.dtype) -> None:  # noqa: A002
        self.map = map
        self.key_dtype = np.dtype(key_dtype)
        self.value_dtype = np.dtype(value_dtype)
        if self.key_dtype.itemsize != map.key_size:
            raise ValueError(
                f"{map.name}: key dtype is {self.key_dtype.itemsize} B, map key {map.key_size} B"
            )
        if self.value_dtype.itemsize != map.value_size:
            raise ValueError(
                f"{map.name}: value dtype is {self.value_dtype.itemsize} B, map value {map.value_size} B"
            )
        if map.percpu:
            # One slot per possible CPU, each padded to 8 bytes: express that as an aligned dtype.
            self._slot_dtype = np.dtype(
                {"names": ["v"], "formats": [self.value_dtype], "offsets": [0], "itemsize": map.value_stride}
            )

    # ---- conversions ----

    def _key_bytes(self, key: KeyLike) -> bytes:
        if isinstance(key, int | np.integer):
            return np.array(key, dtype=self.key_dtype).tobytes()
        if isinstance(key, np.void | np.ndarray):
            return key.tobytes()
        return bytes(key)

    def _value_bytes(self, value) -> bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value)
            if self.map.percpu and len(value) == self.map.value_size:
                return self._percpu_broadcast(np.frombuffer(value, self.value_dtype)[0])
            return value
        if self.map.percpu:
            arr = np.asarray(value, dtype=self.value_dtype)
            if arr.shape == ():
                return self._percpu_broadcast(arr)
            slots = np.zeros(self.map.ncpus, self._slot_dtype)
            slots["v"] = arr
            return slots.tobytes()
        return np.asarray(value, dtype=self.value_dtype).tobytes()

    def _percpu_broadcast(self, v) -> bytes:
        slots = np.zeros(self.map.ncpus, self._slot_dtype)
        slots["v"] = v
        return slots.tobytes()

    def _decode_value(self, raw: bytes):
        if self.map.percpu:
            return np.frombuffer(raw, self._slot_dtype)["v"].copy()
        return np.frombuffer(raw, self.value_dtype)[0].copy()

    def _decode_key(self, raw: bytes) -> np.void:
        return np.frombuffer(raw, self.key_dtype)[0].copy()

    # ---- ops ----

    def lookup(self, key: KeyLike):
        """Value as np.void (or ndarray (ncpus,) for per-CPU maps), None if absent."""
        raw = self.map.lookup(self._key_bytes(key))
        return None if raw is None else self._decode_value(raw)

    def update(self, key: KeyLike, value, flags: int = 0) -> None:
        """Per-CPU maps: a single value is written to every CPU; an (ncpus,) array per CPU."""
        self.map.update(self._key_bytes(key), self._value_bytes(value), flags)

    def delete(self, key: KeyLike) -> bool:
        return self.map.delete(self._key_bytes(key))

    def items(self) -> Iterator[tuple[np.void, object]]:
        for k, v in self.map.items_raw():
            yield self._decode_key(k), self._decode_value(v)

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All entries as (keys (n,), values (n,) or (n, ncpus)) arrays; batch lookup when possible."""
        kb, vb, n = self.map.dump_raw()
        keys = np.frombuffer(kb, self.key_dtype, count=n).copy()
        if self.map.percpu:
            vals = np.frombuffer(vb, self._slot_dtype, count=n * self.map.ncpus)["v"]
            return keys, vals.reshape(n, self.map.ncpus).copy()
        return keys, np.frombuffer(vb, self.value_dtype, count=n).copy()

    def sum_percpu(self, key: KeyLike) -> np.void | np.generic | None:
        """Sum a per-CPU value over CPUs, field by field (for counters)."""
        vals = self.lookup(key)
        if vals is None:
            return None
        if not self.map.percpu:
            return vals
        out = np.zeros((), self.value_dtype)
        if self.value_dtype.names:
            for name in self.value_dtype.names:
                out[name] = vals[name].sum(axis=0)
        else:
            out[()] = vals.sum(axis=0)
        return out[()] if self.value_dtype.names else out

    def __len__(self) -> int:
        return sum(1 for _ in self.map.keys())  # noqa: SIM118 - Map.keys() is an iterator, not a dict
