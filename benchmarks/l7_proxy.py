#!/usr/bin/env python3
"""HTTP requests/s and latency through the node's L7 proxy, and with proxy-free HTTP visibility, vs.
the same requests straight to the pod.

What runs (everything inside the lab's namespaces):
  * `tendril lab up --relay-port 0` creates a one-node lab (name bl<4 hex>, a random 198.18.X.0/24
    underlay) and `tendril apply` creates bench/server (app=l7-server) with two `tendril workload
    http-echo` containers, on 8080 and 8081 (the same server code on both ports), and an idle
    bench/client (app=l7-client).
  * One CiliumNetworkPolicy selects the server: ingress from app=l7-client on 8080 with an HTTP
    rule (`GET /bench/.*`: every request of the run matches it), and on 8081 a plain L3/L4 rule.
    So 8080 is redirected by tnd_from_container to the proxy in the agent (h11 on asyncio: parse,
    rule match, forward over a kept-alive upstream connection, two L7 flow rows per request),
    and 8081 goes pod -> pod as any allowed connection.
  * Client: per run, a Python driver started in the client pod with `nsenter --net=...` forks C
    processes; each opens one keep-alive connection (http.client) and sends GET /bench/<n> in a
    blocking loop for a fixed time (at most `cap` requests), timing each request.
  * Arms, in rotating order for R rounds: "direct" (port 8081, the baseline), "proxy" (8080) and
    "visible" (8081 again, with the server annotated `tendril.io/http-visibility: "true"` for the
    run, applied in place: the datapath snaps every request and response start at the server's
    veth and the agent turns them into http-request/response flows; the annotation is removed
    after the run).
  * Per run: requests, errors, req/s, latency p50/p99 (over all requests of the run), the agent's
    CPU time. `tendril lab down` always runs at the end.

It prints medians per arm and "proxy / direct" and "visibility on / off" ratios, with the number
of exchanges visibility recorded against the requests sent (snaps the agent could not take in time
are counted as lost events, as the flow ring's are). Nothing asserts on time; figures depend on
what else the machine runs (the load average is printed).

    sudo .venv/bin/python benchmarks/l7_proxy.py            # about 2 minutes
    sudo .venv/bin/python benchmarks/l7_proxy.py --quick    # about 45 s
    sudo .venv/bin/python benchmarks/l7_proxy.py --agent-nice 0     # the agent weighs as one pod
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchlib
from benchlib import cpu_seconds, loadavg, tendril, wait_pods
from tendril.datapath.netns import nsenter_argv
from tendril.datapath.podnet import pod_netns_name

NS = "bench"
PROXIED, DIRECT = 8080, 8081


def server_pod(visible: bool = False) -> str:
    """The server; with the visibility annotation (an in-place update: processes keep running)."""
    annotations = '{tendril.io/http-visibility: "true"}' if visible else "{}"
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {NS}, labels: {{app: l7-server}}, annotations: {annotations}}}
spec:
  containers:
    - {{name: proxied, command: [tendril, workload, http-echo, --port, "{PROXIED}"]}}
    - {{name: direct, command: [tendril, workload, http-echo, --port, "{DIRECT}"]}}
"""


PODS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
{server_pod()}---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}, labels: {{app: l7-client}}}}
spec:
  containers: [{{name: idle}}]
"""
POLICY = f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: server-in, namespace: {NS}}}
spec:
  endpointSelector: {{matchLabels: {{app: l7-server}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: l7-client}}}}]
      toPorts:
        - ports: [{{port: "{PROXIED}", protocol: TCP}}]
          rules: {{http: [{{method: GET, path: "/bench/.*"}}]}}
        - ports: [{{port: "{DIRECT}", protocol: TCP}}]
"""

# Runs in the client pod: C processes, one keep-alive connection each, GET until `seconds` pass
# (at most `cap` requests each). Prints one JSON line: requests, errors, elapsed, latencies (us).
CLIENT = r"""
import http.client, json, os, sys, time
ip, port, procs, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
seconds = float(sys.argv[4])
pipes = []
t0 = time.monotonic() + 0.2
for _ in range(procs):
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        lat, err = [], 0
        c = http.client.HTTPConnection(ip, port, timeout=5)
        time.sleep(max(0.0, t0 - time.monotonic()))
        end, mono = t0 + seconds, time.monotonic
        for n in range(cap):
            s = mono()
            if s >= end:
                break
            try:
                c.request("GET", f"/bench/{n}")
                resp = c.getresponse()
                resp.read()
                if resp.status != 200:
                    err += 1
            except OSError:
                err += 1
                c.close()
                c = http.client.HTTPConnection(ip, port, timeout=5)
                continue
            lat.append(int((mono() - s) * 1e6))
        os.write(w, json.dumps({"lat": lat, "err": err, "elapsed": mono() - t0}).encode())
        os._exit(0)
    os.close(w)
    pipes.append(r)
lat, err, elapsed = [], 0, 0.0
for r in pipes:
    data = b""
    while chunk := os.read(r, 1 << 20):
        data += chunk
    out = json.loads(data)
    lat += out["lat"]
    err += out["err"]
    elapsed = max(elapsed, out["elapsed"])
for _ in pipes:
    os.wait()
lat.sort()
print(json.dumps({"requests": len(lat), "errors": err, "elapsed": elapsed,
                  "p50": lat[len(lat) // 2] if lat else 0, "p99": lat[int(len(lat) * 0.99)] if lat else 0}))
"""


def agent_get(node: str, path: str) -> dict:
    """One GET on the agent's REST API (status has its pid, /v1/proxy the proxy's counters)."""
    from tendril.cli.client import AgentClient

    with AgentClient(node) as c:
        return c.get(path)


def agent_pid(node: str) -> int:
    return int(agent_get(node, "/v1/status").get("pid", 0))


def run_arm(lab: str, node: str, server_ip: str, port: int, procs: int, seconds: float, cap: int) -> dict:
    netns = pod_netns_name(node, NS, "client")
    pid = agent_pid(node)
    cpu0 = cpu_seconds(pid)
    r = subprocess.run(
        nsenter_argv(
            netns, [sys.executable, "-c", CLIENT, server_ip, str(port), str(procs), str(seconds), str(cap)]
        ),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    out = json.loads(r.stdout)
    out["rps"] = out["requests"] / out["elapsed"] if out["elapsed"] else 0.0
    out["agent_cpu"] = cpu_seconds(pid) - cpu0
    return out


def wait_http(node: str, ip: str, port: int, timeout: float = 20) -> None:
    netns = pod_netns_name(node, NS, "client")
    code = "import http.client,sys;c=http.client.HTTPConnection(sys.argv[1],int(sys.argv[2]),timeout=2);"
    code += "c.request('GET','/bench/0');assert c.getresponse().status==200"
    deadline = time.monotonic() + timeout
    while subprocess.run(
        nsenter_argv(netns, [sys.executable, "-c", code, ip, str(port)]), capture_output=True
    ).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ip}:{port} does not answer")
        time.sleep(0.3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--procs", type=int, default=4, help="client processes (one connection each)")
    ap.add_argument("--cap", type=int, default=200000, help="at most this many requests per process and run")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    ap.add_argument(
        "--agent-nice",
        type=int,
        default=None,
        help="the agent's autogroup nice (default: the agent's own cpu_nice, -5; 0 = a pod's weight)",
    )
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 3.0
    print(f"load average at start: {loadavg()}")
    lab, _ = benchlib.lab_up("bl", "--relay-port", "0")
    node = f"{lab}-node1"
    try:
        tendril("apply", "-f", "-", "--lab", lab, input=PODS)
        pods = wait_pods(lab, NS, ("server", "client"))
        server_ip = pods["server"]["status"]["podIPs"][0]["ip"]
        tendril("apply", "-f", "-", "--lab", lab, input=POLICY)
        for port in (DIRECT, PROXIED):
            wait_http(node, server_ip, port)
        autogroup = Path(f"/proc/{agent_pid(node)}/autogroup")
        if args.agent_nice is not None:
            # the weight between sessions (each pod is one): what decides the agent's CPU share
            autogroup.write_text(str(args.agent_nice))
        print(f"agent's session: {autogroup.read_text().strip()}")
        arms = [("direct", DIRECT), ("proxy", PROXIED), ("visible", DIRECT)]
        results: dict[str, list[dict]] = {name: [] for name, _ in arms}
        for rnd in range(args.rounds):
            order = arms[rnd % 3 :] + arms[: rnd % 3]
            for name, port in order:
                if name == "visible":
                    tendril("apply", "-f", "-", "--lab", lab, input=server_pod(visible=True))
                    before = agent_get(node, "/v1/proxy")["visibility"]
                try:
                    res = run_arm(lab, node, server_ip, port, args.procs, args.seconds, args.cap)
                finally:
                    if name == "visible":
                        time.sleep(0.5)  # the last snaps reach the agent
                        after = agent_get(node, "/v1/proxy")["visibility"]
                        tendril("apply", "-f", "-", "--lab", lab, input=server_pod(visible=False))
                if name == "visible":
                    res["flows"] = after["responses"] - before["responses"]
                    res["recorded"] = res["flows"] / max(res["requests"], 1)
                results[name].append(res)
                print(
                    f"round {rnd + 1} {name:7s}: {res['rps']:8.0f} req/s  p50 {res['p50'] / 1000:6.2f} ms  "
                    f"p99 {res['p99'] / 1000:6.2f} ms  errors {res['errors']}  "
                    f"agent CPU {res['agent_cpu']:.2f} s"
                    + (f"  exchanges recorded {res['recorded']:.0%}" if "flows" in res else "")
                )
        med = {
            name: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "agent_cpu")}
            for name, rs in results.items()
        }
        print()
        for name, m in med.items():
            print(
                f"median {name:7s}: {m['rps']:8.0f} req/s  p50 {m['p50'] / 1000:6.2f} ms"
                f"  p99 {m['p99'] / 1000:6.2f} ms  agent CPU {m['agent_cpu']:.2f} s/run"
            )
        d, p = med["direct"], med["proxy"]
        print(
            f"proxy / direct: req/s {p['rps'] / d['rps']:.2f}x, "
            f"p50 latency {p['p50'] / max(d['p50'], 1):.2f}x, p99 latency {p['p99'] / max(d['p99'], 1):.2f}x"
        )
        v = med["visible"]
        print(
            f"visibility on / off: req/s {v['rps'] / d['rps']:.2f}x, "
            f"p50 latency {v['p50'] / max(d['p50'], 1):.2f}x, "
            f"p99 latency {v['p99'] / max(d['p99'], 1):.2f}x, "
            f"agent CPU {v['agent_cpu']:.2f} vs {d['agent_cpu']:.2f} s/run, "
            f"exchanges recorded {statistics.median(r['recorded'] for r in results['visible']):.0%}"
        )
        print(f"proxy counters: {agent_get(node, '/v1/proxy')}")
    finally:
        subprocess.run([benchlib.TENDRIL, "lab", "down", "--name", lab], capture_output=True, timeout=120)
        print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
