#!/usr/bin/env python3
"""Flow store benchmarks: memory per stored flow and GetFlows latency, against protobuf objects.

Baseline (measured in the same run): the same flows held the obvious way, as protobuf flow.Flow
messages in a Python list, filtered with a Python loop. Tendril's store keeps fixed-size numpy rows
with interned strings and filters with one vectorised mask per chunk.

    .venv/bin/python benchmarks/flow_store.py            # 1,048,575 flows (about 1 minute)
    .venv/bin/python benchmarks/flow_store.py --quick    # 131,071 flows
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tendril.hubble import record as rec  # noqa: E402
from tendril.hubble.api import flow_pb2  # noqa: E402
from tendril.hubble.container import FlowRing  # noqa: E402
from tendril.hubble.convert import rows_to_protos  # noqa: E402
from tendril.hubble.filters import compile_filters  # noqa: E402
from tendril.hubble.observer.getflows import Selection, historical  # noqa: E402
from test_observer import make_rows  # noqa: E402 - synthetic flows shared with the tests


def fill_ring(capacity: int) -> tuple[FlowRing, rec.Tables]:
    tables = rec.Tables()
    ring = FlowRing(capacity)
    step = 65536
    for start in range(0, capacity, step):
        ring.append(make_rows(tables, min(step, capacity - start), start=start))
    return ring, tables


def rss_bytes() -> int:
    """Resident memory: protobuf messages live in C (upb) arenas that tracemalloc cannot see."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bytes_per_flow_protobuf(ring: FlowRing, tables: rec.Tables, sample: int) -> float:
    rows = ring.read(ring.oldest, ring.oldest + sample)
    gc.collect()
    before = rss_bytes()
    flows = rows_to_protos(rows, tables)
    after = rss_bytes()
    assert len(flows) == sample
    return (after - before) / sample


def timeit(fn, repeat: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    capacity = 131071 if args.quick else 1048575
    sample = 20000 if args.quick else 100000

    t = time.perf_counter()
    ring, tables = fill_ring(capacity)
    fill_s = time.perf_counter() - t
    n = len(ring)
    store_bytes = ring.nbytes() / n
    pb_bytes = bytes_per_flow_protobuf(ring, tables, sample)
    print(f"flows stored:                    {n:,} (filled in {fill_s:.2f} s)")
    print(f"bytes per stored flow, tendril:  {store_bytes:,.0f}  (numpy rows, strings interned)")
    print(
        f"bytes per stored flow, protobuf: {pb_bytes:,.0f}  (flow.Flow objects in a list; {sample:,} sampled)"
    )
    print(f"tendril / protobuf memory = {store_bytes / pb_bytes:.3f}")

    # A selective query: drops from one pod to port 80, last 20 (what `hubble observe --from-pod
    # default/xwing --verdict DROPPED --to-port 80` sends).
    wl = [
        flow_pb2.FlowFilter(source_pod=["default/xwing"], verdict=[flow_pb2.DROPPED], destination_port=["80"])
    ]
    pred = compile_filters(wl, [], tables)
    sel = Selection(number=20, first=False, follow=False, since_ns=None, until_ns=None)

    def tendril_query() -> list:
        rows, _ = historical(ring, pred, sel)
        return rows_to_protos(rows, tables)

    # the rarest match: a query that must scan the whole store (a pod that sent nothing)
    wl_none = [flow_pb2.FlowFilter(source_pod=["default/nobody"])]
    pred_none = compile_filters(wl_none, [], tables)

    def tendril_full_scan() -> list:
        rows, _ = historical(ring, pred_none, sel)
        return rows_to_protos(rows, tables)

    assert len(tendril_query()) == 20
    t_sel = timeit(tendril_query, 20)
    t_scan = timeit(tendril_full_scan, 5)

    # baseline: protobuf objects in a list, matched by a Python loop from the newest backwards
    base_flows = rows_to_protos(ring.read(ring.written - sample, ring.written), tables)

    def match(f: flow_pb2.Flow) -> bool:
        return (
            f.source.namespace == "default"
            and f.source.pod_name.startswith("xwing")
            and f.verdict == flow_pb2.DROPPED
            and f.l4.TCP.destination_port == 80
        )

    def base_query() -> list:
        out = []
        for f in reversed(base_flows):
            if match(f):
                out.append(f)
                if len(out) == 20:
                    break
        return out[::-1]

    def base_scan() -> int:
        return sum(1 for f in base_flows if f.source.pod_name == "nobody")

    assert len(base_query()) == 20
    b_sel = timeit(base_query, 20)
    b_scan = timeit(base_scan, 3) * (n / sample)  # extrapolated to the full store
    print()
    print("GetFlows, last 20 drops from default/xwing to port 80 (found near the newest rows):")
    print(
        f"  tendril {t_sel * 1e3:8.2f} ms   protobuf list {b_sel * 1e3:8.2f} ms   tendril / baseline = "
        f"{t_sel / b_sel:.2f}"
    )
    print(f"GetFlows, a filter matching nothing (scans all {n:,} flows):")
    print(
        f"  tendril {t_scan * 1e3:8.2f} ms   protobuf list {b_scan * 1e3:8.2f} ms (extrapolated from "
        f"{sample:,})   tendril / baseline = {t_scan / b_scan:.3f}"
    )


if __name__ == "__main__":
    main()
