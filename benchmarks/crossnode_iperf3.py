#!/usr/bin/env python3
"""iperf3 TCP pod -> pod across two nodes, native routing and VXLAN, each against plain routing with no BPF.

What runs (everything inside the labs' namespaces):
  * For each routing mode (native, vxlan), `tendril lab up --nodes 2 --routing MODE --relay-port 0`
    creates a two-node lab (name bx<4 hex>, a random 198.18.X.0/24 underlay; node netns
    tnd-<lab>-node1/2 on one bridge, an etcd, one agent per node) and `tendril apply` two idle pods:
    `bench/client` with `spec.nodeName: <lab>-node1` and `bench/server` on <lab>-node2.
  * `iperf3 -s` runs in the server pod and `iperf3 -c <server IPv4> -t T -O 1 -J` in the client pod,
    both through `nsenter --net=/run/netns/<pod netns>`.
  * Arms, alternated in rotating order for R rounds (so neither always goes first):
      - "tendril MODE": the datapath as the agents set it up. Native: tnd_from_container (tcx ingress
        of the client's host veth) passes the packet to the kernel, which routes it over the
        underlay by the agents' proto 183 routes; tnd_from_netdev (eth0 ingress) on node2 looks at
        it (NodePort miss), and tnd_to_container (tcx egress of the server's veth) delivers it.
        VXLAN: tnd_from_container redirects it into node1's tnd_vxlan (source identity in the VNI);
        on node2 tnd_from_netdev lets the UDP 8472 packet pass, the VXLAN device decapsulates it and
        tnd_from_overlay (its tcx ingress) hands it on to tnd_to_container. Replies the same way back.
      - "bare": the baseline, in the same lab with the same pods: every tcx link that is on this path
        is detached on BOTH nodes (the pods' veths lxc*, and unless --veth-only, the underlay's
        netdev-ingress and the VXLAN device's overlay-ingress), so packets take the kernel's native
        routes between the nodes, which the agents install in both modes: plain routing over the
        same underlay, no BPF. In VXLAN mode this baseline is therefore unencapsulated: the ratio
        includes the cost of encapsulation (and the pods keep the overlay's MTU 1450 in both arms).
        After each bare run the same loaded programs are attached again and re-pinned where the
        agents keep them (benchlib.VethPrograms).
  * Per run: throughput (iperf3 receiver), TCP retransmits, iperf3's CPU figures, the MSS, packets the
    datapath counted on both nodes (tnd_metrics; must be 0 in bare runs), and bytes sent by node1's
    tnd_vxlan (must be 0 in bare runs and in native mode).
  * `tendril lab down` always runs after each mode.

It prints per-arm medians (Gbit/s, retransmits), "tendril native / bare", "tendril vxlan / bare"
(each against the bare arm of its own lab, interleaved) and "tendril vxlan / tendril native" (the two
labs run one after the other, so this one is not interleaved). Nothing asserts on time; figures
depend on what else the machine runs (the load average is printed).

    sudo .venv/bin/python benchmarks/crossnode_iperf3.py            # about 4 min
    sudo .venv/bin/python benchmarks/crossnode_iperf3.py --quick    # about 2 min
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
    iperf3_client,
    loadavg,
    tendril,
    wait_pods,
)
from tendril.datapath.podnet import pod_netns_name

NS = "bench"
MODES = ("native", "vxlan")
BARE = "bare"

PODS = """
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {ns}, labels: {{app: iperf-server}}}}
spec:
  nodeName: {lab}-node2
  containers: [{{name: idle}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}, labels: {{app: iperf-client}}}}
spec:
  nodeName: {lab}-node1
  containers: [{{name: idle}}]
"""


def arm_name(mode: str) -> str:
    return f"tendril {mode}"


def ip_json(*args: str) -> list[dict]:
    r = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10)
    return json.loads(r.stdout or "[]") if r.returncode == 0 else []


def pod_mtu(netns: str) -> int:
    """MTU of the pod's interface (the one that is not lo)."""
    links = [link for link in ip_json("-n", netns, "link", "show") if link.get("ifname") != "lo"]
    return int(links[0]["mtu"]) if links else 0


def tx_bytes(netns: str, dev: str) -> float:
    """Bytes sent by `dev` in `netns` (0 when it does not exist)."""
    links = ip_json("-s", "-n", netns, "link", "show", "dev", dev)
    return float(links[0]["stats64"]["tx"]["bytes"]) if links else 0.0


def run_mode(mode: str, rounds: int, seconds: int, globs: tuple[str, ...]) -> dict:
    """One lab in `mode`: R rounds of the two arms; returns {"runs": {arm: [run]}, "rounds": [...], ...}."""
    arms = [arm_name(mode), BARE]
    name, underlay = benchlib.lab_up("bx", "--nodes", "2", "--routing", mode, "--relay-port", "0")
    nodes = (f"{name}-node1", f"{name}-node2")
    node1_netns = f"tnd-{nodes[0]}"
    veths = [VethPrograms(n, globs) for n in nodes]
    counters: list[DatapathCounters] = []
    server: Iperf3Server | None = None
    out: dict = {"runs": {a: [] for a in arms}, "rounds": []}
    try:
        print(f"\n== {mode}: lab {name} (underlay {underlay}, 2 nodes) up; applying pods", flush=True)
        tendril("apply", "-f", "-", "--lab", name, input=PODS.format(ns=NS, lab=name))
        pods = wait_pods(name, NS, ("server", "client"), timeout=60)
        placed = {p: pods[p].get("spec", {}).get("nodeName", "?") for p in ("client", "server")}
        server_ip = pods["server"]["status"]["podIPs"][0]["ip"]
        client_ns = pod_netns_name(nodes[0], NS, "client")
        server_ns = pod_netns_name(nodes[1], NS, "server")
        counters = [DatapathCounters(n) for n in nodes]
        server = Iperf3Server(server_ns)
        warm = server.start(client_ns, server_ip)
        out["mtu"] = (pod_mtu(client_ns), pod_mtu(server_ns))
        out["mss"] = warm["mss"]
        print(
            f"client on {placed['client']}, server {server_ip} on {placed['server']}; pod MTU "
            f"{out['mtu'][0]}/{out['mtu'][1]}, MSS {warm['mss']}; warm-up {warm['gbps']:.2f} Gbit/s"
        )
        for v in veths:
            print(f"  bare detaches on {v.node}: {', '.join(v.names())}")
        print(
            f"{'round':>5}  {'arm':<16}{'Gbit/s':>8}{'retrans':>9}{'cli CPU%':>9}{'srv CPU%':>9}"
            f"{'MSS':>6}{'BPF pkts':>10}{'vxlan tx MB':>12}",
            flush=True,
        )
        for rnd in range(rounds):
            order = arms[rnd % len(arms) :] + arms[: rnd % len(arms)]
            this_round: dict[str, float] = {}
            for arm in order:
                if arm == BARE:
                    for v in veths:
                        v.detach_all()
                try:
                    pkts0 = sum(c.packets() for c in counters)
                    tx0 = tx_bytes(node1_netns, "tnd_vxlan")
                    run = iperf3_client(client_ns, server_ip, seconds)
                    run["bpf_packets"] = sum(c.packets() for c in counters) - pkts0
                    run["vxlan_mb"] = (tx_bytes(node1_netns, "tnd_vxlan") - tx0) / 1e6
                finally:
                    if arm == BARE:
                        for v in veths:
                            v.reattach_all()
                out["runs"][arm].append(run)
                this_round[arm] = run["gbps"]
                print(
                    f"{rnd + 1:>5}  {arm:<16}{run['gbps']:8.2f}{run['retrans']:9d}{run['cpu_client']:9.0f}"
                    f"{run['cpu_server']:9.0f}{run['mss']:6d}{run['bpf_packets']:10.0f}{run['vxlan_mb']:12.1f}",
                    flush=True,
                )
            out["rounds"].append(this_round)
    finally:
        if server is not None:
            server.stop()
        for v in veths:
            with contextlib.suppress(Exception):  # the lab goes down next anyway
                v.close()
        for c in counters:
            c.close()
        subprocess.run([TENDRIL, "lab", "down", "--name", name], capture_output=True, timeout=120)
    return out


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 s runs (about 2 min)")
    ap.add_argument("--rounds", type=int, help="rounds, each running both arms once (default 5, quick 2)")
    ap.add_argument("--seconds", type=int, help="iperf3 -t per run, after 1 s omitted (default 5, quick 3)")
    ap.add_argument("--modes", default=",".join(MODES), help="routing modes, in order (default native,vxlan)")
    ap.add_argument(
        "--veth-only",
        action="store_true",
        help="bare detaches only the pods' veth programs (eth0's NodePort program stays on the path)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, eBPF)", file=sys.stderr)
        return 2
    if not shutil.which("iperf3"):
        print("iperf3 is not installed (apt-get install iperf3)", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        print(f"--modes: a comma-separated list of {', '.join(MODES)}", file=sys.stderr)
        return 2
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = args.seconds or (3 if args.quick else 5)
    globs = ("lxc*",) if args.veth_only else ("lxc*", "netdev-*", "overlay-*")
    t_start = time.monotonic()
    load_start = loadavg()
    print(
        f"iperf3 TCP pod -> pod across 2 nodes ({', '.join(modes)}): {rounds} rounds x 2 arms per mode, "
        f"iperf3 -t {seconds} -O 1; {os.cpu_count()} CPUs, load average {load_start}"
    )
    results = {m: run_mode(m, rounds, seconds, globs) for m in modes}

    # ---- summary ----
    bare_is = "only the pods' veth programs detached" if args.veth_only else "no BPF on the path"
    print(f"\nsummary (median of {rounds} runs per arm; each bare is the same lab with {bare_is})")
    print(f"  {'mode':<8}{'arm':<16}{'Gbit/s':>8}{'retrans':>9}{'MSS':>6}{'pod MTU':>8}  per-round / bare")
    med: dict[str, dict[str, float]] = {}
    for m, res in results.items():
        med[m] = {}
        for a, runs in res["runs"].items():
            med[m][a] = median(runs, "gbps")
            paired = [r[a] / r[BARE] for r in res["rounds"] if a in r and BARE in r]
            span = "(baseline)" if a == BARE else " ".join(f"{x:.2f}" for x in paired)
            print(
                f"  {m:<8}{a:<16}{med[m][a]:8.2f}{median(runs, 'retrans'):9.0f}{median(runs, 'mss'):6.0f}"
                f"{res['mtu'][0]:8d}  {span}"
            )
    print()
    for m, res in results.items():
        a = arm_name(m)
        paired = statistics.median(r[a] / r[BARE] for r in res["rounds"])
        note = ""
        if m == "vxlan":
            note = (
                "  (bare = unencapsulated routing at the pods' MTU 1450: the ratio includes the cost of "
                "VXLAN encapsulation)"
            )
        print(
            f"  tendril {m} / bare = {med[m][a] / med[m][BARE]:.2f} (ratio of medians; "
            f"median of per-round ratios {paired:.2f}){note}"
        )
    if "native" in med and "vxlan" in med:
        vx, nat = med["vxlan"][arm_name("vxlan")], med["native"][arm_name("native")]
        print(
            f"  tendril vxlan / tendril native = {vx / nat:.2f}"
            f"  (bare vxlan lab / bare native lab = {med['vxlan'][BARE] / med['native'][BARE]:.2f}; "
            "the two labs ran one after the other, not interleaved)"
        )
    bare_pkts = sum(r["bpf_packets"] for res in results.values() for r in res["runs"][BARE])
    bare_tx = sum(r["vxlan_mb"] for res in results.values() for r in res["runs"][BARE])
    print(
        f"  check: packets counted by BPF during bare runs = {bare_pkts:.0f}, tnd_vxlan MB sent during "
        f"bare runs = {bare_tx:.1f} (0 and 0 = the programs really were detached and the traffic was routed)"
    )
    if "vxlan" in results:
        tx = median(results["vxlan"]["runs"][arm_name("vxlan")], "vxlan_mb")
        print(f"  check: tnd_vxlan MB sent per tendril vxlan run (median) = {tx:.1f} (> 0 = encapsulated)")
    print(
        f"  total time {time.monotonic() - t_start:.0f} s; "
        f"load average at start {load_start}, now {loadavg()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
