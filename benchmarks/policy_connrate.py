#!/usr/bin/env python3
"""New TCP connections per second into a policy-enforcing endpoint vs. the same endpoint unenforced.

What runs (everything inside the lab's namespaces):
  * `tendril lab up --hubble-metrics ""` creates a one-node lab (name bc<4 hex>, a random
    198.18.X.0/24 underlay) and `tendril apply` two idle pods, bench/server (app=cr-server) and
    bench/client (app=cr-client), on that node. Path: client pod -> veth -> node netns (routing)
    -> veth -> server pod, with tnd_from_container / tnd_to_container on both host-side veths.
  * Server: a raw TCP server in Python, started in the server pod with
    `nsenter --net=/run/netns/<pod netns>`: S forked processes accept on one listening socket on
    port 8080, read 1 byte, write 1 byte, close (the server closes first, so TIME_WAIT stays on the
    server side and the client never runs out of ports).
  * Client: per run, a Python driver started the same way in the client pod forks C processes.
    Each runs a blocking loop for a fixed time (bounded count): connect, send 1 byte, read the
    1-byte answer, read EOF, close. Every connection is new on both veths (a new conntrack entry,
    or a closing one reopened when a client port comes round again).
  * Arms, in rotating order for R rounds:
      - "unenforced" (the baseline): no policy at all (`tendril policy delete --all`);
      - "enforced (1 rule)": a CiliumNetworkPolicy selecting the server, ingress
        fromEndpoints app=cr-client toPorts 8080/TCP (an L3-L4 rule). Every new connection then
        takes, in tnd_to_container on the server's veth, an ipcache lookup of the client's
        identity, two policy LPM lookups (identity, then identity 0) and a policy-verdict event;
        later packets of the connection take the two lookups again (Cilium re-checks every
        original-direction packet);
      - "enforced (+200 rules)": the same policy plus one with 200 more L3-L4 rules, each
        fromCIDR 10.77.i.0/24 to port 20000+i, so the server's policy map holds 200 more
        identity/port entries and the ipcache 200 more CIDR prefixes. `--no-extra-rules` skips it.
  * Per run: connections, errors, the client's and server's CPU time, the agent's CPU time, the
    whole machine's CPU split (/proc/stat), the events the agent read (its status: trace events
    plus policy verdicts) and events lost (tnd_lost). The lab runs without Hubble metrics (the
    agent's default), because a metric plugin adds its own cost to every batch of events the agent
    parses. `--verdict-metric` enables the "policy" metric and also counts the verdicts exactly
    (hubble_policy_verdicts_total by action, scraped in the node netns).
  * `--monitor-aggregation none` starts the lab without trace events: the baseline then produces no
    events at all, and each enforced connection exactly one (its policy verdict).
  * `tendril lab down` always runs at the end.

It prints medians per arm and "enforced / unenforced" ratios (of medians, and per round). Nothing
asserts on time; figures depend on what else the machine runs (the load average is printed).

    sudo .venv/bin/python benchmarks/policy_connrate.py            # about 2 minutes
    sudo .venv/bin/python benchmarks/policy_connrate.py --quick    # about 1 minute
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import benchlib
from benchlib import TENDRIL, cpu_seconds, loadavg, tendril, wait_pods
from tendril.bpf import TypedMap, abi
from tendril.bpf.maps import Map
from tendril.common import paths
from tendril.datapath.netns import call_in_netns, netns_path
from tendril.datapath.podnet import pod_netns_name

NS = "bench"
PORT = 8080
EXTRA_RULES = 200
PODS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {NS}, labels: {{app: cr-server}}}}
spec:
  containers: [{{name: idle}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}, labels: {{app: cr-client}}}}
spec:
  containers: [{{name: idle}}]
"""
ALLOW = f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: server-in, namespace: {NS}}}
spec:
  endpointSelector: {{matchLabels: {{app: cr-server}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: cr-client}}}}]
      toPorts: [{{ports: [{{port: "{PORT}", protocol: TCP}}]}}]
"""
EXTRA = f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: server-extra, namespace: {NS}}}
spec:
  endpointSelector: {{matchLabels: {{app: cr-server}}}}
  ingress:
""" + "".join(
    f'    - {{fromCIDR: [10.77.{i}.0/24], toPorts: [{{ports: [{{port: "{20000 + i}", protocol: TCP}}]}}]}}\n'
    for i in range(EXTRA_RULES)
)

# Runs in the server pod: S processes accept on one socket; read 1 byte, answer 1 byte, close.
SERVER = r"""
import os, socket, sys
port, procs = int(sys.argv[1]), int(sys.argv[2])
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", port))
ls.listen(4096)
pids = []
for _ in range(procs):
    pid = os.fork()
    if pid == 0:
        accept = ls.accept
        while True:
            c, _ = accept()
            try:
                if c.recv(1):
                    c.send(b"y")
            except OSError:
                pass
            c.close()
    pids.append(pid)
print(" ".join(map(str, pids)), flush=True)
os.wait()
"""

# Runs in the client pod: C processes, each a blocking connect/request/response/close loop from
# monotonic time t0 for `seconds` (at most `cap` connections). Prints one JSON line.
CLIENT = r"""
import json, os, resource, socket, sys, time
ip, port, procs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0, seconds, cap = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
pipes = []
for _ in range(procs):
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        addr, mono, sock = (ip, port), time.monotonic, socket.socket
        AF, ST = socket.AF_INET, socket.SOCK_STREAM
        n = err = 0
        late = max(0.0, mono() - t0)
        time.sleep(max(0.0, t0 - mono()))
        end = t0 + seconds
        now = mono()
        while now < end and n < cap:
            s = sock(AF, ST)
            try:
                s.connect(addr)
                s.send(b"x")
                if s.recv(1) != b"y" or s.recv(1) != b"":
                    raise OSError("bad answer")
                n += 1
            except OSError:
                err += 1
            s.close()
            now = mono()
        os.write(w, json.dumps({"n": n, "err": err, "elapsed": now - t0, "late": late}).encode())
        os._exit(0)
    os.close(w)
    pipes.append(r)
res = []
for r in pipes:
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    res.append(json.loads(data))
for _ in range(procs):
    os.wait()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"conns": sum(x["n"] for x in res), "errors": sum(x["err"] for x in res),
                  "elapsed": max(x["elapsed"] for x in res), "late": max(x["late"] for x in res),
                  "cpu": ru.ru_utime + ru.ru_stime}))
"""

UNENF, ENF, ENF200 = "unenforced", "enforced (1 rule)", f"enforced (+{EXTRA_RULES} rules)"
POLICY_DOCS = {UNENF: "", ENF: ALLOW, ENF200: ALLOW + "---\n" + EXTRA}


def machine_cpu() -> dict[str, float]:
    """Seconds of CPU time, summed over all CPUs, by kind (the first line of /proc/stat)."""
    f = [
        int(x) / os.sysconf("SC_CLK_TCK")
        for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ]
    # user nice system idle iowait irq softirq steal
    return {"user": f[0] + f[1], "system": f[2], "idle": f[3] + f[4], "softirq": f[5] + f[6], "steal": f[7]}


class Lab:
    def __init__(self, name: str, underlay: str) -> None:
        self.name = name
        self.underlay = underlay
        self.node = f"{name}-node1"
        self.node_netns = f"tnd-{self.node}"
        self._lost: TypedMap | None = None
        self.policy = ""
        self.agent_pid = 0
        self.verdict_metric = False

    def status(self) -> dict:
        from tendril.cli.client import AgentClient

        with AgentClient(self.node) as c:
            return c.get("/v1/status")

    def verdicts(self) -> dict[str, float]:
        """hubble_policy_verdicts_total by action, scraped from the agent's Hubble metrics server."""

        def scrape() -> str:
            with urllib.request.urlopen("http://127.0.0.1:9965/metrics", timeout=10) as r:
                return r.read().decode()

        out: dict[str, float] = {}
        for m in re.finditer(
            r"^hubble_policy_verdicts_total\{([^}]*)\} (\S+)$", call_in_netns(self.node_netns, scrape), re.M
        ):
            action = re.search(r'action="([^"]*)"', m.group(1))
            key = action.group(1) if action else "?"
            out[key] = out.get(key, 0.0) + float(m.group(2))
        return out

    def counters(self) -> dict[str, float]:
        if self._lost is None:
            pin = paths.bpf_pin_dir(self.node)
            self._lost = TypedMap(
                Map.open_pinned(pin / abi.MAP_LOST), abi.LOST_KEY_DTYPE, abi.LOST_VALUE_DTYPE
            )
        st = self.status()
        self.agent_pid = int(st.get("pid", 0))
        v = self.verdicts() if self.verdict_metric else {}
        return {
            "events_read": float(st.get("events_read", float("nan"))),
            "lost": float(self._lost.lookup(0).sum()),
            "verdicts": sum(v.values()),
            "verdicts_dropped": v.get("dropped", 0.0),
        }

    def server_endpoint(self) -> dict:
        eps = json.loads(tendril("endpoint", "list", "-o", "json", "--lab", self.name))
        return next(e for e in eps if e.get("pod") == "server" and e.get("namespace", NS) == NS)

    def policy_entries(self, ep_id: int) -> int:
        out = json.loads(tendril("bpf", "policy", "get", str(ep_id), "-o", "json", "--lab", self.name))
        return sum(not e["marker"] for e in out["entries"])  # without the enforcement marker

    def ipcache_entries(self) -> int:
        m = TypedMap(
            Map.open_pinned(paths.bpf_pin_dir(self.node) / abi.MAP_IPCACHE),
            abi.IPCACHE_KEY_DTYPE,
            abi.IPCACHE_VALUE_DTYPE,
        )
        try:
            return len(m.to_arrays()[0])
        finally:
            m.map.close()

    def set_policy(self, arm: str) -> None:
        """Install the arm's policies (none for the baseline) and wait until the datapath has them."""
        if self.policy == arm:
            return
        if self.policy != UNENF:
            tendril("policy", "delete", "--all", "--lab", self.name)
        doc = POLICY_DOCS[arm]
        if doc:
            tendril("apply", "-f", "-", "--lab", self.name, input=doc)
        deadline = time.monotonic() + 20
        while self.server_endpoint()["policy_ingress"] != bool(doc):
            if time.monotonic() > deadline:
                raise RuntimeError(f"server endpoint enforcement did not become {bool(doc)} for {arm}")
            time.sleep(0.1)
        self.policy = arm

    def close(self) -> None:
        if self._lost is not None:
            self._lost.map.close()


def lab_up(aggregation: str, verdict_metric: bool) -> Lab:
    metrics = "policy" if verdict_metric else ""
    lab = Lab(*benchlib.lab_up("bc", "--hubble-metrics", metrics, "--monitor-aggregation", aggregation))
    lab.verdict_metric = verdict_metric
    return lab


def start_client(
    client_ns: str, server_ip: str, procs: int, t0: float, seconds: float, cap: int
) -> subprocess.Popen:
    argv = [
        "nsenter",
        f"--net={netns_path(client_ns)}",
        "--",
        sys.executable,
        "-c",
        CLIENT,
        server_ip,
        str(PORT),
        str(procs),
        f"{t0:.6f}",
        str(seconds),
        str(cap),
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_client(p: subprocess.Popen, seconds: float) -> dict:
    out, err = p.communicate(timeout=seconds + 60)
    if p.returncode != 0:
        raise RuntimeError(f"client failed ({p.returncode}): {err.strip()}")
    return json.loads(out)


def one_run(
    lab: Lab, client_ns: str, server_ip: str, procs: int, seconds: float, cap: int, server_pids: list[int]
) -> dict:
    before = lab.counters()
    t0 = time.monotonic() + 0.5  # the client's processes are forked and waiting by then
    p = start_client(client_ns, server_ip, procs, t0, seconds, cap)
    try:
        time.sleep(max(0.0, t0 - time.monotonic()))
        m0, s0, a0 = machine_cpu(), sum(cpu_seconds(x) for x in server_pids), cpu_seconds(lab.agent_pid)
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
        m1, s1, a1 = machine_cpu(), sum(cpu_seconds(x) for x in server_pids), cpu_seconds(lab.agent_pid)
        run = finish_client(p, seconds)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    time.sleep(0.3)  # let the agent drain the last events (it drains at least every 100 ms)
    after = lab.counters()
    for k in before:
        run[k] = after[k] - before[k]
    run["rate"] = run["conns"] / run["elapsed"] if run["elapsed"] > 0 else 0.0
    run["server_cpu"] = s1 - s0
    run["agent_cpu"] = a1 - a0
    run["machine"] = {k: m1[k] - m0[k] for k in m0}
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 s runs (about 1 minute)")
    ap.add_argument("--rounds", type=int, help="rounds, each running every arm once (default 5, quick 2)")
    ap.add_argument("--seconds", type=float, help="seconds per run (default 3, quick 2)")
    ap.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--servers", type=int, default=2, help="server processes (default 2)")
    ap.add_argument("--max-conns", type=int, default=200_000, help="cap per client process and run")
    ap.add_argument(
        "--monitor-aggregation",
        choices=["medium", "none", "all"],
        default="medium",
        help="trace events (default medium, the agent's default; policy verdicts are emitted at every level)",
    )
    ap.add_argument(
        "--verdict-metric",
        action="store_true",
        help="count policy verdicts with the agent's Hubble 'policy' metric (adds agent CPU per event batch)",
    )
    ap.add_argument("--no-extra-rules", action="store_true", help=f"skip the +{EXTRA_RULES}-rules arm")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, eBPF)", file=sys.stderr)
        return 2
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = args.seconds or (2.0 if args.quick else 3.0)
    arms = [ENF, UNENF] + ([] if args.no_extra_rules else [ENF200])
    t_start = time.monotonic()

    print(
        f"new TCP connections/s, client pod -> server pod :{PORT}, same node: {rounds} rounds x {len(arms)} "
        f"arms x {seconds:g} s; {args.clients} client / {args.servers} server processes; monitor aggregation "
        f"{args.monitor_aggregation}; {os.cpu_count()} CPUs, "
        f"load average {loadavg()}"
    )
    lab = lab_up(args.monitor_aggregation, args.verdict_metric)
    server: subprocess.Popen | None = None
    results: dict[str, list[dict]] = {a: [] for a in arms}
    per_round: list[dict[str, float]] = []
    entries: dict[str, int] = {}
    sample = ""
    try:
        print(f"lab {lab.name} (underlay {lab.underlay}) up; applying pods", flush=True)
        tendril("apply", "-f", "-", "--lab", lab.name, input=PODS)
        pods = wait_pods(lab.name, NS, ("server", "client"))
        server_ip = pods["server"]["status"]["podIPs"][0]["ip"]
        client_ns = pod_netns_name(lab.node, NS, "client")
        server_ns = pod_netns_name(lab.node, NS, "server")
        server = subprocess.Popen(
            [
                "nsenter",
                f"--net={netns_path(server_ns)}",
                "--",
                sys.executable,
                "-c",
                SERVER,
                str(PORT),
                str(args.servers),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert server.stdout is not None
        server_pids = [int(x) for x in server.stdout.readline().split()]
        for attempt in range(50):  # warm-up; also waits for the server to listen
            warm = finish_client(start_client(client_ns, server_ip, 1, time.monotonic(), 0.3, 1000), 0.3)
            if warm["conns"] and not warm["errors"]:
                break
            if attempt == 49:
                raise RuntimeError(f"server {server_ip}:{PORT} does not answer: {warm}")
            time.sleep(0.2)
        ep = lab.server_endpoint()
        lab.policy = UNENF
        ipcache: dict[str, int] = {}
        for arm in arms:
            lab.set_policy(arm)
            entries[arm] = lab.policy_entries(ep["id"]) if POLICY_DOCS[arm] else 0
            ipcache[arm] = lab.ipcache_entries()
        print(
            f"server {server_ip} (endpoint {ep['id']}) in {server_ns}\n"
            "entries (server policy map / ipcache): "
            + ", ".join(f"{a} {entries[a]} / {ipcache[a]}" for a in arms)
        )
        print(
            f"\n{'round':>5}  {'arm':<24}{'conn/s':>8}{'conns':>8}{'errs':>6}{'verdicts':>9}{'events':>8}"
            f"{'lost':>6}{'cli CPU':>9}{'srv CPU':>9}{'agent':>7}{'softirq':>8}{'idle':>6}",
            flush=True,
        )
        for rnd in range(rounds):
            order = arms[rnd % len(arms) :] + arms[: rnd % len(arms)]
            this_round: dict[str, float] = {}
            for arm in order:
                lab.set_policy(arm)
                run = one_run(lab, client_ns, server_ip, args.clients, seconds, args.max_conns, server_pids)
                results[arm].append(run)
                this_round[arm] = run["rate"]
                m = run["machine"]
                verdicts = f"{run['verdicts']:.0f}" if lab.verdict_metric else "-"
                print(
                    f"{rnd + 1:>5}  {arm:<24}{run['rate']:8.0f}{run['conns']:8d}{run['errors']:6d}"
                    f"{verdicts:>9}{run['events_read']:8.0f}{run['lost']:6.0f}{run['cpu']:8.2f}s"
                    f"{run['server_cpu']:8.2f}s{run['agent_cpu']:6.2f}s{m['softirq']:7.2f}s{m['idle']:5.2f}s",
                    flush=True,
                )
            per_round.append(this_round)
        if ENF in arms:  # one more connection, so that its verdict is the newest flow in the agent's ring
            lab.set_policy(ENF)
            finish_client(start_client(client_ns, server_ip, 1, time.monotonic(), 0.2, 1), 0.2)
            time.sleep(0.3)
            sample = tendril("observe", "--type", "policy-verdict", "--last", "1", "--lab", lab.name).strip()
        lab.set_policy(UNENF)
    finally:
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)  # the server and the processes it forked
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=5)
        lab.close()
        subprocess.run([TENDRIL, "lab", "down", "--name", lab.name], capture_output=True, timeout=120)

    # ---- summary ----
    med = {a: statistics.median(r["rate"] for r in results[a]) for a in arms}
    base = med[UNENF]
    print(
        f"\nsummary (median of {rounds} runs of {seconds:g} s; ratios against the unenforced baseline "
        "of the same run)"
    )
    w = max(18, 5 * rounds) + 2
    print(
        f"  {'arm':<24}{'conn/s':>8}{'ratio':>7}  {'per-round ratios':<{w}}{'events/conn':>12}"
        f"{'+ vs base':>10}{'verdicts/conn':>14}{'errors':>7}{'lost':>6}"
    )

    def per_conn(a: str, key: str) -> float:
        conns = sum(r["conns"] for r in results[a])
        return sum(r[key] for r in results[a]) / conns if conns else float("nan")

    for a in arms:
        rs = results[a]
        epc = per_conn(a, "events_read")
        vpc = f"{per_conn(a, 'verdicts'):.3f}" if lab.verdict_metric else "-"
        span = "(baseline)" if a == UNENF else " ".join(f"{r[a] / r[UNENF]:.2f}" for r in per_round)
        print(
            f"  {a:<24}{med[a]:8.0f}{med[a] / base:7.2f}  {span:<{w}}{epc:12.3f}"
            f"{epc - per_conn(UNENF, 'events_read'):10.3f}{vpc:>14}"
            f"{sum(r['errors'] for r in rs):7d}{sum(r['lost'] for r in rs):6.0f}"
        )
    print(
        "  (+ vs base: events per connection beyond the unenforced arm's, i.e. the policy verdicts; "
        "verdicts/conn: counted by\n  the Hubble metric, with --verdict-metric)"
    )
    print(
        "\n  CPU time per connection (µs, over all runs of the arm). client, server, agent: the processes' "
        "own times\n  (they include the softirq work the kernel runs in their context: veth, BPF, TCP); "
        "sum: those three;\n  softirq, busy: the whole machine (/proc/stat, tick-sampled), other "
        "processes included"
    )
    print(f"  {'arm':<24}{'client':>8}{'server':>8}{'agent':>8}{'sum':>8}{'softirq':>8}{'busy':>8}")
    cost: dict[str, float] = {}
    for a in arms:
        rs = results[a]
        conns = sum(r["conns"] for r in rs) or 1
        parts = [sum(r[k] for r in rs) for k in ("cpu", "server_cpu", "agent_cpu")]
        parts.append(sum(parts))
        cost[a] = parts[-1] / conns
        parts.append(sum(r["machine"]["softirq"] for r in rs))
        parts.append(sum(seconds * (os.cpu_count() or 1) - r["machine"]["idle"] for r in rs))
        print(f"  {a:<24}" + "".join(f"{1e6 * x / conns:8.1f}" for x in parts))
    for a in (ENF, ENF200):
        if a in med:
            paired = statistics.median(r[a] / r[UNENF] for r in per_round)
            print(
                f"\n  {a} / unenforced = {med[a] / base:.2f} (ratio of medians)"
                f"\n  {'':<{len(a) + 13}} {paired:.2f} (median of the {rounds} per-round ratios)"
                f"\n  CPU per connection, {a} / unenforced = {cost[a] / cost[UNENF]:.2f} (sum column)",
                end="",
            )
    print()
    late = max(r["late"] for a in arms for r in results[a])
    dropped = sum(r["verdicts_dropped"] for a in arms for r in results[a])
    print(
        f"  checks: latest client process start after the common start time = {1000 * late:.0f} ms "
        "(should be 0)"
        + (f"; policy verdicts with action dropped = {dropped:.0f}" if lab.verdict_metric else "")
    )
    busy = statistics.median(
        1 - r["machine"]["idle"] / (seconds * (os.cpu_count() or 1)) for a in arms for r in results[a]
    )
    print(f"  machine CPU busy during runs (median): {100 * busy:.0f}% of {os.cpu_count()} CPUs")
    if sample:
        print(f"  last policy verdict seen: {sample.splitlines()[-1]}")
    print(f"  total time {time.monotonic() - t_start:.0f} s; load average now {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
