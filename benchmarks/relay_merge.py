#!/usr/bin/env python3
"""Hubble Relay: GetFlows throughput when merging N nodes, against one node's Observer read directly.

Every node is a real Observer (`start_observer`) in its own process, as an agent is, with a
`FlowRing` holding F flows (tests/test_observer.py's synthetic flows, stamped with the node's name
and shifted 1 ms per node so that nodes interleave). A node listens twice on 127.0.0.1: with mTLS
(its certificate from `ensure_certs` in a temporary directory; this is what the relay dials) and
in plaintext. Each relay is `start_relay` in its own process, with Hubble's default sort buffer
(100 responses, 1 s), mTLS towards the nodes and a plaintext listener; it finds its N nodes through
a real Peer service (`PeerSource` + `add_peer_service`, in the relay's process). One relay runs for
each N, so all of them stay up during the rounds. The client is this script's main process, with
the generated synchronous stub (`observer_pb2_grpc.ObserverStub`), as the hubble CLI reads.

Arms, in each round (their order rotates from round to round):
- **direct node** (the baseline): GetFlows(number=F) from node n1's plaintext listener;
- **direct node, mTLS**: the same from n1's mTLS listener, with the relay's client certificate
  (shows what TLS alone costs);
- **relay(N)**: GetFlows(number=F) through the relay of N nodes, which asks every node for its
  last F flows, so N×F flows come back, merged in time order.

Then a follow test: each node appends flows at a fixed rate (`--rate` per node, in 10 ms batches,
every flow stamped with the wall clock when it enters the ring) for a few seconds, while a
GetFlows(follow=True) stream reads them, directly from n1 (the baseline: n1 alone loads) or
through relay(N) (its N nodes load). Lag = receive time in the client - flow time.

Reported: flows received, flows/s, the time to the first flow, CPU µs per flow of the node
processes, the relay and the client (CPU time of each process over the run, from /proc), the
relay's peak RSS, and "relay(N) / direct node" ratios (of the median rates, and the median of the
per-round ratios). Everything runs on 127.0.0.1 with free ports; every process is stopped at the end.

    .venv/bin/python benchmarks/relay_merge.py            # N = 1, 2, 4; F = 16,383; 3 rounds (~2.7 min)
    .venv/bin/python benchmarks/relay_merge.py --quick    # N = 1, 2; 1 round; 3 s of follow (~40 s)
    .venv/bin/python benchmarks/relay_merge.py --flows 65535 --rounds 1 --nodes 1,4   # bigger rings

No root needed. The relay moves about 2,000-4,000 flows/s on a 2-CPU VM, so a round costs about
9×F / 3,000 seconds (F each for the two direct arms and relay(1), 2F and 4F for the others).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no GOAWAY notices from channels closed at the end

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from benchlib import cpu_seconds, loadavg  # noqa: E402
from tendril.hubble.api import observer_pb2, observer_pb2_grpc, relay_pb2  # noqa: E402
from tendril.hubble.container import FlowRing  # noqa: E402
from tendril.hubble.observer.service import ObserverContext, start_observer  # noqa: E402
from tendril.hubble.peer import PeerInfo, PeerSource, add_peer_service, tls_server_name  # noqa: E402
from tendril.hubble.record import Tables  # noqa: E402
from tendril.hubble.relay import RelayConfig, start_relay  # noqa: E402
from tendril.hubble.tls import TlsLayout, ensure_certs  # noqa: E402
from test_relay import free_port, node_rows  # noqa: E402 - the relay tests' flows and ports

CLUSTER = "bench"
TICK = 0.01  # follow load: one batch per node every 10 ms
# Follow: flows of the load's last 1.5 s are left out of the "steady" lag. When the load stops, the
# relay's sort buffer keeps its last (up to 100) flows until its 1 s drain timer fires.
TAIL_QUIET = 1.5
START_TIMEOUT = 60.0


# --- child processes -------------------------------------------------------------------------------


def _commands(conn: Connection) -> asyncio.Queue[tuple[Any, ...]]:
    """Commands from the parent, as a queue on the running loop; ("stop",) when the parent goes away."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def readable() -> None:
        try:
            q.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            q.put_nowait(("stop",))

    loop.add_reader(conn.fileno(), readable)
    return q


def node_process(
    conn: Connection, name: str, k: int, ports: tuple[int, int], tls_dir: str, flows: int
) -> None:
    asyncio.run(_node(conn, name, k, ports, Path(tls_dir), flows))


async def _node(
    conn: Connection, name: str, k: int, ports: tuple[int, int], tls_dir: Path, flows: int
) -> None:
    tls_port, plain_port = ports
    tables = Tables()
    ring = FlowRing((1 << flows.bit_length()) - 1)
    ring.append(node_rows(tables, name, k, flows))
    ctx = ObserverContext(name, ring, tables, address=f"127.0.0.1:{tls_port}")
    commands = _commands(conn)
    servers = []
    try:
        tls = TlsLayout(tls_dir).node_server_tls(name)
        servers.append(await start_observer(ctx, None, f"127.0.0.1:{tls_port}", tls=tls))
        servers.append(await start_observer(ctx, None, f"127.0.0.1:{plain_port}"))
        conn.send(("ready", os.getpid()))
        while True:
            cmd = await commands.get()
            if cmd[0] == "stop":
                break
            if cmd[0] == "load":
                _, rate, seconds, start_wall = cmd
                conn.send(("loaded", await _load(ring, tables, name, k, flows, rate, seconds, start_wall)))
    finally:
        for server in servers:
            await server.stop(0)


async def _load(
    ring: FlowRing,
    tables: Tables,
    name: str,
    k: int,
    seq: int,
    rate: float,
    seconds: float,
    start_wall: float,
) -> int:
    """Append int(rate * seconds) flows, evenly over `seconds` in TICK batches, stamped on entry."""
    total = int(rate * seconds)
    rows = node_rows(tables, name, k, total, start=seq)
    await asyncio.sleep(max(0.0, start_wall - time.time()))
    t0 = time.monotonic()
    done = 0
    while done < total:
        due = min(total, int(rate * (time.monotonic() - t0)))
        if due > done:
            batch = rows[done:due]
            batch["time_ns"] = time.time_ns()
            ring.append(batch)
            done = due
        await asyncio.sleep(TICK)
    return done


def relay_process(conn: Connection, peers: list[tuple[str, str, str]], tls_dir: str, name: str) -> None:
    asyncio.run(_relay(conn, peers, Path(tls_dir), name))


async def _relay(conn: Connection, peers: list[tuple[str, str, str]], tls_dir: Path, name: str) -> None:
    commands = _commands(conn)
    peer_server = grpc.aio.server()
    add_peer_service(peer_server, PeerSource(PeerInfo(*p) for p in peers))
    peer_port = peer_server.add_insecure_port("127.0.0.1:0")
    relay = None
    try:
        await peer_server.start()
        cfg = RelayConfig(
            peer_services=[f"127.0.0.1:{peer_port}"],
            listen_address="127.0.0.1:0",
            tls_dir=tls_dir,
            cluster=CLUSTER,
            name=name,
        )
        relay = await start_relay(cfg)
        conn.send(("ready", os.getpid(), relay.port, len(relay.pool.connected())))
        while (await commands.get())[0] != "stop":
            pass
    finally:
        if relay is not None:
            await relay.stop(0)
        await peer_server.stop(0)


@dataclass
class Child:
    name: str
    proc: Any  # multiprocessing.Process (spawn context)
    conn: Connection
    pid: int = 0
    info: tuple[Any, ...] = ()

    def ready(self) -> None:
        if not self.conn.poll(START_TIMEOUT):
            raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT:.0f}s")
        msg = self.conn.recv()
        if msg[0] != "ready":
            raise RuntimeError(f"{self.name}: {msg}")
        self.pid = msg[1]
        if len(msg) > 2:
            self.info = msg[2:]

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # already gone
            self.conn.send(("stop",))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()  # this child only, by its own pid
            self.proc.join(5)
        self.conn.close()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- client side ------------------------------------------------------------------------------------


@dataclass
class Arm:
    label: str
    channel: grpc.Channel
    nodes: int  # nodes behind it (flows expected = nodes * F)
    relay: Child | None = None
    rates: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    cpu: list[tuple[float, float, float]] = field(default_factory=list)  # µs/flow: nodes, relay, client

    @property
    def stub(self) -> observer_pb2_grpc.ObserverStub:
        return observer_pb2_grpc.ObserverStub(self.channel)


def cpu_snapshot(node_pids: list[int], relay: Child | None) -> tuple[float, float, float]:
    return (
        sum(cpu_seconds(p) for p in node_pids),
        cpu_seconds(relay.pid) if relay else 0.0,
        cpu_seconds(os.getpid()),
    )


def per_flow_us(before: tuple[float, ...], after: tuple[float, ...], n: int) -> tuple[float, float, float]:
    d = [(a - b) * 1e6 / max(n, 1) for a, b in zip(after, before, strict=True)]
    return d[0], d[1], d[2]


def fetch(arm: Arm, number: int, node_pids: list[int]) -> None:
    """One GetFlows(number=F): flows received, flows/s, seconds to the first flow, CPU per flow."""
    before = cpu_snapshot(node_pids, arm.relay)
    t0 = time.perf_counter()
    first = 0.0
    n = 0
    for resp in arm.stub.GetFlows(observer_pb2.GetFlowsRequest(number=number), timeout=300):
        if resp.HasField("flow"):
            if not n:
                first = time.perf_counter() - t0
            n += 1
    elapsed = time.perf_counter() - t0
    arm.cpu.append(per_flow_us(before, cpu_snapshot(node_pids, arm.relay), n))
    arm.received.append(n)
    arm.rates.append(n / elapsed)
    arm.first.append(first)


@dataclass
class FollowResult:
    label: str
    offered: int
    received: int
    seconds: float  # load start to the last flow received
    lag_ms: np.ndarray
    steady_ms: np.ndarray  # lags of the flows that entered a ring before the last TAIL_QUIET s of load
    lost: int
    cpu: tuple[float, float, float]

    @property
    def rate(self) -> float:
        return self.received / self.seconds


def follow_run(
    arm: Arm, loaders: list[Child], node_pids: list[int], rate: float, seconds: float, tail: float
) -> FollowResult:
    """Follow while `loaders` append at `rate` each; read until every flow arrived or a deadline."""
    expected = len(loaders) * int(rate * seconds)
    call = arm.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True), timeout=seconds + tail + 30)
    if arm.relay is not None:
        first = next(call)  # the relay's NODE_CONNECTED, listing the nodes it follows
        assert first.node_status.state_change == relay_pb2.NODE_CONNECTED, first
        assert len(first.node_status.node_names) == arm.nodes, first
    time.sleep(0.5)  # let the streams reach the nodes (the relay opens one per node)
    start_wall = time.time() + 0.2
    before = cpu_snapshot(node_pids, arm.relay)
    for child in loaders:
        child.conn.send(("load", rate, seconds, start_wall))
    timer = threading.Timer(start_wall + seconds + tail - time.time(), call.cancel)
    timer.start()
    lags: list[int] = []
    born: list[int] = []
    lost = 0
    last = start_wall
    try:
        for resp in call:
            recv = time.time_ns()
            if resp.HasField("flow"):
                t = resp.time
                born.append(t.seconds * 1_000_000_000 + t.nanos)
                lags.append(recv - born[-1])
                if len(lags) >= expected:
                    last = recv / 1e9
                    break
            elif resp.HasField("lost_events"):
                lost += resp.lost_events.num_events_lost
            last = recv / 1e9
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            raise
    finally:
        timer.cancel()
        call.cancel()
    offered = 0
    for child in loaders:
        if not child.conn.poll(seconds + 10):
            raise RuntimeError(f"{child.name} did not finish its load")
        offered += child.conn.recv()[1]
    cpu = per_flow_us(before, cpu_snapshot(node_pids, arm.relay), len(lags))
    lag_ms = np.array(lags) / 1e6
    steady = np.array(born) < (start_wall + seconds - TAIL_QUIET) * 1e9
    return FollowResult(arm.label, offered, len(lags), last - start_wall, lag_ms, lag_ms[steady], lost, cpu)


# --- output ------------------------------------------------------------------------------------------


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def print_historical(arms: list[Arm], number: int) -> None:
    base = arms[0]
    print()
    print(f"GetFlows(number={number:,}), median of {len(base.rates)} rounds:")
    head = (
        f"  {'arm':<20} {'flows recv':>10} {'flows/s':>9} {'1st flow':>9} "
        f"{'node µs/f':>9} {'relay µs/f':>10} {'client µs/f':>11} {'relay RSS':>9}"
    )
    print(head)
    for arm in arms:
        cpu = [med([c[i] for c in arm.cpu]) for i in range(3)]
        rss = f"{peak_rss_mib(arm.relay.pid):6.0f} MiB" if arm.relay else ""
        relay_cpu = f"{cpu[1]:10.1f}" if arm.relay else f"{'-':>10}"
        print(
            f"  {arm.label:<20} {med(arm.received):>10,.0f} {med(arm.rates):>9,.0f} "
            f"{med(arm.first) * 1e3:>7.0f}ms {cpu[0]:>9.1f} {relay_cpu} {cpu[2]:>11.1f} {rss:>9}"
        )
    print()
    for ref in arms[:2]:
        for arm in arms:
            if arm.relay is None:
                continue
            paired = [a / b for a, b in zip(arm.rates, ref.rates, strict=True)]
            print(
                f"  {arm.label} / {ref.label}: flows/s {med(arm.rates) / med(ref.rates):.2f} "
                f"(median paired {med(paired):.2f}; per round {', '.join(f'{p:.2f}' for p in paired)})"
            )


def print_follow(results: list[FollowResult], rate: float, seconds: float) -> None:
    print()
    print(f"Follow: each loading node appends {rate:,.0f} flows/s for {seconds:g} s (10 ms batches):")
    print(
        f"  {'arm':<20} {'offered':>8} {'received':>8} {'flows/s':>8} {'lag p50':>9} {'lag p99':>9} "
        f"{'lag max':>9} {'p99 steady':>10} {'lost':>5} {'node µs/f':>9} {'relay µs/f':>10} "
        f"{'client µs/f':>11}"
    )
    for r in results:
        p50, p99, mx = (np.percentile(r.lag_ms, q) if len(r.lag_ms) else float("nan") for q in (50, 99, 100))
        steady = np.percentile(r.steady_ms, 99) if len(r.steady_ms) else float("nan")
        print(
            f"  {r.label:<20} {r.offered:>8,} {r.received:>8,} {r.rate:>8,.0f} "
            f"{p50:>7.1f}ms {p99:>7.1f}ms {mx:>7.1f}ms {steady:>8.1f}ms {r.lost:>5} {r.cpu[0]:>9.1f} "
            f"{f'{r.cpu[1]:.1f}' if r.label.startswith('relay') else '-':>10} {r.cpu[2]:>11.1f}"
        )
    base = results[0]
    b50 = float(np.percentile(base.lag_ms, 50))
    print()
    for r in results[1:]:
        print(
            f"  {r.label} / {base.label}: flows/s {r.rate / base.rate:.2f} "
            f"(offered ×{r.offered / base.offered:.0f}), received/offered {r.received / r.offered:.3f} "
            f"vs {base.received / base.offered:.3f}, lag p50 ×{float(np.percentile(r.lag_ms, 50)) / b50:.1f}"
        )
    print(f"  (p99 steady: the flows that entered a ring before the last {TAIL_QUIET:g} s of the load)")
    sort_len = RelayConfig([]).sort_buffer_len
    holds = ", ".join(f"{r.label} {sort_len / (r.offered / seconds) * 1e3:.0f} ms" for r in results[1:])
    print(
        f"  (the relay's sort buffer holds a flow until {sort_len} more arrived, or at most "
        f"{RelayConfig([]).sort_buffer_drain:g} s; {sort_len} flows at the offered rates: {holds})"
    )


# --- main ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 1, 2; 1 round; 3 s of follow")
    ap.add_argument("--flows", type=int, help="flows per node ring (F); default 16,383")
    ap.add_argument("--nodes", help="comma-separated N; default 1,2,4 (--quick 1,2)")
    ap.add_argument("--rounds", type=int, help="historical rounds; default 3 (--quick 1)")
    ap.add_argument("--rate", type=float, default=500, help="follow: flows/s appended per node (500)")
    ap.add_argument("--seconds", type=float, help="follow: seconds of load; default 4 (--quick 3)")
    args = ap.parse_args()
    flows = args.flows or 16383
    counts = [int(x) for x in args.nodes.split(",")] if args.nodes else ([1, 2] if args.quick else [1, 2, 4])
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (3.0 if args.quick else 4.0)
    tail = 3.0  # follow: reading goes on this long after the load (sort buffer drain is 1 s)
    t_start = time.monotonic()
    print(f"load average at start: {loadavg()}  ({os.cpu_count()} CPUs)")
    print(f"nodes: {counts}, flows per node: {flows:,}, rounds: {rounds}")

    ctx = mp.get_context("spawn")  # a fresh interpreter per process: no gRPC state crosses a fork
    names = [f"n{i + 1}" for i in range(max(counts))]
    children: list[Child] = []
    channels: list[grpc.Channel] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        tls_dir = Path(tmp) / "tls"
        layout = ensure_certs(tls_dir, CLUSTER, names, dict.fromkeys(names, "127.0.0.1"))
        try:
            t = time.monotonic()
            nodes = []
            for k, name in enumerate(names):
                ports = (free_port(), free_port())
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=node_process, args=(child, name, k, ports, str(tls_dir), flows), daemon=True
                )
                proc.start()
                child.close()
                node = Child(name, proc, parent, info=ports)
                nodes.append(node)
                children.append(node)
            for node in nodes:
                node.ready()
            node_pids = [n.pid for n in nodes]
            relays = []
            for n in counts:
                peers = [
                    (x.name, f"127.0.0.1:{x.info[0]}", tls_server_name(x.name, CLUSTER)) for x in nodes[:n]
                ]
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=relay_process, args=(child, peers, str(tls_dir), f"relay-{n}"), daemon=True
                )
                proc.start()
                child.close()
                relay = Child(f"relay({n})", proc, parent)
                relays.append(relay)
                children.append(relay)
            for n, relay in zip(counts, relays, strict=True):
                relay.ready()
                if relay.info[1] != n:
                    raise RuntimeError(f"{relay.name}: {relay.info[1]}/{n} nodes connected")
            print(f"started {len(nodes)} nodes and {len(relays)} relays in {time.monotonic() - t:.1f} s")

            n1 = nodes[0]

            def channel(
                target: str, creds: grpc.ChannelCredentials | None = None, **opts: str
            ) -> grpc.Channel:
                if creds is None:
                    ch = grpc.insecure_channel(target)
                else:
                    ch = grpc.secure_channel(target, creds, options=list(opts.items()))
                channels.append(ch)
                return ch

            arms = [
                Arm("direct node", channel(f"127.0.0.1:{n1.info[1]}"), 1),
                Arm(
                    "direct node, mTLS",
                    channel(
                        f"127.0.0.1:{n1.info[0]}",
                        layout.relay_client_tls().credentials(),
                        **{"grpc.ssl_target_name_override": tls_server_name(n1.name, CLUSTER)},
                    ),
                    1,
                ),
            ]
            arms += [
                Arm(f"relay({n})", channel(f"127.0.0.1:{r.info[0]}"), n, r)
                for n, r in zip(counts, relays, strict=True)
            ]
            for arm in arms:  # connect (and handshake) outside the measurement
                list(arm.stub.GetFlows(observer_pb2.GetFlowsRequest(number=10), timeout=30))

            for r in range(rounds):
                shift = r % len(arms)
                for arm in arms[shift:] + arms[:shift]:
                    fetch(arm, flows, node_pids)
                    if arm.received[-1] != arm.nodes * flows:
                        print(f"  ! {arm.label}: {arm.received[-1]:,} flows, expected {arm.nodes * flows:,}")
                print(
                    f"round {r + 1}: "
                    + ", ".join(f"{a.label} {a.rates[-1]:,.0f}/s" for a in arms)
                    + f"  (load {loadavg()})"
                )
            print_historical(arms, flows)

            results = [follow_run(arms[0], [n1], node_pids, args.rate, seconds, tail)]
            for arm in arms[2:]:
                results.append(follow_run(arm, nodes[: arm.nodes], node_pids, args.rate, seconds, tail))
            print_follow(results, args.rate, seconds)
        finally:
            for ch in channels:
                ch.close()
            for c in reversed(children):
                c.stop()
    print()
    print(f"load average at end: {loadavg()}  (run took {time.monotonic() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
