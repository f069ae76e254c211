#!/usr/bin/env python3
"""iperf3 TCP pod -> pod throughput with the Tendril datapath attached vs the same veths with no BPF.

What runs (everything inside the lab's namespaces):
  * `tendril lab up` creates a one-node lab (name bn<4 hex>, a random 198.18.X.0/24 underlay) and
    `tendril apply` two idle pods, server and client, on that node. The path is
    client pod -> veth -> node netns (routing) -> veth -> server pod; Tendril's tnd_from_container
    (tcx ingress) and tnd_to_container (tcx egress) sit on both host-side veths, so every packet
    passes two programs.
  * `iperf3 -s` runs in the server pod and `iperf3 -c <server IPv4> -t T -O 1 -J` in the client pod,
    both through `nsenter --net=/run/netns/<pod netns>`.
  * Arms, alternated in rotating order for R rounds (so no arm always goes first):
      - "bare veth": the baseline; the four tcx links are detached (the pinned links under
        /sys/fs/bpf/tendril/<node>/links/ are opened and detached), same veths, same routes;
      - "tendril (medium)": the programs attached, the agent's default monitor aggregation
        (trace events for new flows, first replies, SYN/FIN/RST only);
      - "tendril (every packet)": `tendril config MonitorAggregationLevel=none`, Cilium's "no
        aggregation": a trace event for every packet on both veths, read and parsed by the agent.
    After a bare run the links are re-attached to the same loaded programs (by program id) and
    re-pinned at the same paths, as the agent had them. (`tendril lab up` again would not re-attach:
    it leaves a healthy agent running.)
  * Per run: throughput (iperf3 receiver), TCP retransmits, iperf3's CPU figures, packets the
    datapath counted (tnd_metrics), trace events the agent read (its status), events lost
    (tnd_lost) and the agent's CPU time.
  * `tendril lab down` always runs at the end.

It prints medians per arm and "tendril / bare veth" ratios (of medians, and per round). Nothing
asserts on time; figures depend on what else the machine runs (the load average is printed).

    sudo .venv/bin/python benchmarks/throughput_iperf3.py            # about 80 s
    sudo .venv/bin/python benchmarks/throughput_iperf3.py --quick    # about 30 s
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time

import benchlib
from benchlib import (
    TENDRIL,
    DatapathCounters,
    Iperf3Server,
    VethPrograms,
    cpu_seconds,
    iperf3_client,
    loadavg,
    tendril,
    wait_pods,
)
from tendril.datapath.podnet import pod_netns_name

NS = "bench"
PODS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {NS}, labels: {{app: iperf-server}}}}
spec:
  containers: [{{name: idle}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}, labels: {{app: iperf-client}}}}
spec:
  containers: [{{name: idle}}]
"""

BARE, MEDIUM, EVERY = "bare veth", "tendril (medium)", "tendril (every packet)"


class Lab:
    def __init__(self, name: str, underlay: str) -> None:
        self.name = name
        self.underlay = underlay
        self.node = f"{name}-node1"
        self.veths = VethPrograms(self.node)  # the pods' veth programs only: the socket LB (cgroup)
        # and NodePort (eth0) links never see pod-to-pod packets on one node
        self._counters: DatapathCounters | None = None

    # ---- agent-side views ----
    def status(self) -> dict:
        from tendril.cli.client import AgentClient

        with AgentClient(self.node) as c:
            return c.get("/v1/status")

    def set_aggregation(self, level: str) -> str:
        out = tendril("config", f"MonitorAggregationLevel={level}", "--lab", self.name)
        for line in out.splitlines():
            if line.strip().startswith("MonitorAggregationLevel"):
                return line.split(":", 1)[1].strip()
        return "?"

    def counters(self) -> dict[str, float]:
        """Packets the programs counted (every reason and direction), events lost, events the agent read."""
        if self._counters is None:
            self._counters = DatapathCounters(self.node)
        st = self.status()
        return {
            "bpf_packets": self._counters.packets(),
            "lost": self._counters.events_lost(),
            "events_read": float(st.get("events_read", float("nan"))),
            "agent_cpu": cpu_seconds(int(st.get("pid", 0))),
        }

    def close(self) -> None:
        if self._counters is not None:
            self._counters.close()


def lab_up() -> Lab:
    return Lab(*benchlib.lab_up("bn"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 s runs (about 30 s)")
    ap.add_argument("--rounds", type=int, help="rounds, each running every arm once (default 5, quick 2)")
    ap.add_argument("--seconds", type=int, help="iperf3 -t per run, after 1 s omitted (default 3, quick 2)")
    ap.add_argument("--no-every-packet", action="store_true", help="skip the every-packet-event arm")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, eBPF)", file=sys.stderr)
        return 2
    if not shutil.which("iperf3"):
        print("iperf3 is not installed (apt-get install iperf3)", file=sys.stderr)
        return 2
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = args.seconds or (2 if args.quick else 3)
    arms = [MEDIUM, BARE] + ([] if args.no_every_packet else [EVERY])
    t_start = time.monotonic()

    print(
        f"iperf3 TCP pod -> pod, same node: {rounds} rounds x {len(arms)} arms, iperf3 -t {seconds} -O 1; "
        f"{os.cpu_count()} CPUs, load average {loadavg()}"
    )
    lab = lab_up()
    server = None
    results: dict[str, list[dict]] = {a: [] for a in arms}
    per_round: list[dict[str, float]] = []
    try:
        print(f"lab {lab.name} (underlay {lab.underlay}) up; applying pods", flush=True)
        tendril("apply", "-f", "-", "--lab", lab.name, input=PODS)
        pods = wait_pods(lab.name, NS, ("server", "client"))
        server_ip = pods["server"]["status"]["podIPs"][0]["ip"]
        client_ns = pod_netns_name(lab.node, NS, "client")
        server_ns = pod_netns_name(lab.node, NS, "server")
        server = Iperf3Server(server_ns)
        server.start(client_ns, server_ip)
        links = sorted(p.name for p in lab.veths.links_dir.iterdir())
        print(f"server {server_ip} in {server_ns}; tcx links: {', '.join(links)}")
        print(
            f"\n{'round':>5}  {'arm':<24}{'Gbit/s':>8}{'retrans':>9}{'cli CPU%':>9}{'srv CPU%':>9}"
            f"{'BPF pkts':>10}{'events':>9}{'lost':>8}{'agent CPU':>10}",
            flush=True,
        )
        level = "medium"
        for rnd in range(rounds):
            order = arms[rnd % len(arms) :] + arms[: rnd % len(arms)]
            this_round: dict[str, float] = {}
            for arm in order:
                want = "none" if arm == EVERY else "medium"
                if arm != BARE and want != level:
                    level = want
                    lab.set_aggregation(level)
                if arm == BARE:
                    lab.veths.detach_all()
                try:
                    before = lab.counters()
                    run = iperf3_client(client_ns, server_ip, seconds)
                    time.sleep(0.3)  # let the agent drain the last events (it drains at least every 100 ms)
                    after = lab.counters()
                finally:
                    if arm == BARE:
                        lab.veths.reattach_all()
                for k in before:
                    run[k] = after[k] - before[k]
                results[arm].append(run)
                this_round[arm] = run["gbps"]
                print(
                    f"{rnd + 1:>5}  {arm:<24}{run['gbps']:8.2f}{run['retrans']:9d}{run['cpu_client']:9.0f}"
                    f"{run['cpu_server']:9.0f}{run['bpf_packets']:10.0f}{run['events_read']:9.0f}"
                    f"{run['lost']:8.0f}{run['agent_cpu']:9.2f}s",
                    flush=True,
                )
            per_round.append(this_round)
        if level != "medium":
            lab.set_aggregation("medium")
    finally:
        if server is not None:
            server.stop()
        with contextlib.suppress(Exception):  # the lab goes down next anyway
            lab.veths.close()
        lab.close()
        subprocess.run([TENDRIL, "lab", "down", "--name", lab.name], capture_output=True, timeout=120)

    # ---- summary ----
    med = {a: statistics.median(r["gbps"] for r in results[a]) for a in arms}
    base = med[BARE]
    run_s = seconds
    print(f"\nsummary (median of {rounds} runs; ratios against the bare-veth baseline of the same run)")
    w = max(18, 5 * rounds) + 2
    print(
        f"  {'arm':<24}{'Gbit/s':>8}{'ratio':>8}  {'per-round ratios':<{w}}{'events/run':>11}"
        f"{'events/s':>10}{'lost/run':>9}{'events/pkt':>11}{'agent CPU':>10}"
    )
    for a in arms:
        rs = results[a]
        paired = [r[a] / r[BARE] for r in per_round if a in r and BARE in r]
        ev = statistics.median(r["events_read"] for r in rs)
        lost = statistics.median(r["lost"] for r in rs)
        pkts = statistics.median(r["bpf_packets"] for r in rs)
        cpu = statistics.median(r["agent_cpu"] for r in rs)
        per_pkt = f"{ev / pkts:.3f}" if pkts else "-"
        span = "(baseline)" if a == BARE else " ".join(f"{x:.2f}" for x in paired)
        print(
            f"  {a:<24}{med[a]:8.2f}{med[a] / base:8.2f}  {span:<{w}}{ev:11.0f}{ev / (run_s + 1):10.0f}"
            f"{lost:9.0f}{per_pkt:>11}{100 * cpu / (run_s + 1):9.0f}%"
        )
    for a, what in ((MEDIUM, "medium aggregation, the default"), (EVERY, "an event for every packet")):
        if a in med:
            paired = statistics.median(r[a] / r[BARE] for r in per_round)
            print(
                f"\n  tendril / bare veth = {med[a] / base:.2f} ({what}; ratio of medians)"
                f"\n  {'':<22}{paired:.2f} (median of the {rounds} per-round ratios)",
                end="",
            )
    print()
    bare_pkts = sum(r["bpf_packets"] for r in results[BARE])
    print(
        f"  check: packets counted by BPF during bare runs = {bare_pkts:.0f} "
        "(0 = the programs really were detached)"
    )
    print(
        f"  events/s and agent CPU are per run second ({run_s} s measured + 1 s omitted); "
        f"total time {time.monotonic() - t_start:.0f} s; load average now {loadavg()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
