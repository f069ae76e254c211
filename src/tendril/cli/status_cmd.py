"""`tendril status`: the whole lab at a glance, in the `cilium status` spirit.

One line per component (agents, kvstore, Hubble Relay), then a row per node. `--wait` polls until
every part is ready, which scripts use after `lab up` (as `cilium status --wait` is used after install).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from tendril.cli.client import DEFAULT_LAB, AgentClient, resolve_nodes
from tendril.cli.tabwriter import render
from tendril.common.errors import TendrilError


def _node_status(node: str) -> dict[str, Any]:
    try:
        with AgentClient(node, timeout=5.0) as c:
            st = c.get("/v1/status")
    except TendrilError as e:
        return {"node": node, "ok": False, "error": str(e)}
    cluster = st.get("cluster", {})
    kv = cluster.get("kvstore", {})
    problems = [] if kv.get("connected", True) else [f"kvstore: {kv.get('error') or 'disconnected'}"]
    problems += cluster.get("errors", [])
    return {**st, "ok": not problems, "errors": problems}


def _relay_status(port: int) -> dict[str, Any]:
    import grpc

    from tendril.hubble.api import observer_pb2, observer_pb2_grpc

    addr = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(addr) as ch:
            st = observer_pb2_grpc.ObserverStub(ch).ServerStatus(
                observer_pb2.ServerStatusRequest(), timeout=3
            )
    except grpc.RpcError as e:
        return {"address": addr, "ok": False, "error": e.details() or str(e.code())}
    connected = st.num_connected_nodes.value if st.HasField("num_connected_nodes") else 0
    unavailable = st.num_unavailable_nodes.value if st.HasField("num_unavailable_nodes") else 0
    return {
        "address": addr,
        "ok": unavailable == 0 and connected > 0,
        "connected_nodes": connected,
        "unavailable_nodes": list(st.unavailable_nodes),
        "num_flows": st.num_flows,
        "max_flows": st.max_flows,
        "seen_flows": st.seen_flows,
    }


def collect(lab: str) -> dict[str, Any]:
    from tendril.lab.cluster import load_lab

    record = load_lab(lab) or {}
    nodes = [_node_status(n) for n in resolve_nodes(lab, None)]
    relay = record.get("relay")
    kv_url = record.get("kvstore", "") if record else ""
    kv_ok = all(n.get("cluster", {}).get("kvstore", {}).get("connected", False) for n in nodes if n["ok"])
    out = {
        "lab": lab,
        "routing": record.get("routing", "native"),
        "nodes": nodes,
        "kvstore": {"endpoint": kv_url or "embedded", "ok": kv_ok and all(n["ok"] for n in nodes)},
        "relay": _relay_status(relay["port"]) if relay else None,
    }
    out["ok"] = all(n["ok"] for n in nodes) and out["kvstore"]["ok"] and (relay is None or out["relay"]["ok"])
    return out


def _proxy_line(nodes: list[dict[str, Any]]) -> list[str]:
    """As `cilium status`'s "Proxy Status", over every node, with the proxy-free HTTP visibility."""
    proxies = [n["proxy"] for n in nodes if n.get("proxy")]
    if not proxies:
        return ["Proxy Status:", "unknown", ""]
    ports = sorted({f"HTTP :{p['http_port']}" for p in proxies if p["http_port"]})
    ports += sorted({f"DNS :{p['dns_port']}" for p in proxies if p["dns_port"]})
    redirects = sum(p["redirects"] for p in proxies)
    visible = sum(p["visibility_endpoints"] for p in proxies)
    detail = f"{redirects} redirects active ({', '.join(ports) or 'no proxy'}), "
    detail += f"HTTP visibility without proxy on {visible} endpoint(s)"
    return ["Proxy Status:", "OK" if ports else "disabled", detail]


def _summary(st: dict[str, Any]) -> str:
    nodes = st["nodes"]
    ok_agents = sum(1 for n in nodes if n["ok"])
    lines = [
        ["Tendril:", "OK" if ok_agents == len(nodes) else "Errors", f"{ok_agents}/{len(nodes)} agents ready"],
        ["Routing:", st["routing"], ""],
    ]
    kv = st["kvstore"]
    lines.append(["KVStore:", "OK" if kv["ok"] else "Errors", kv["endpoint"]])
    relay = st["relay"]
    if relay is None:
        lines.append(["Hubble Relay:", "disabled", ""])
    elif relay["ok"]:
        lines.append(
            ["Hubble Relay:", "OK", f"{relay['address']}, {relay['connected_nodes']} node(s) connected"]
        )
    else:
        detail = relay.get("error") or f"unavailable: {', '.join(relay['unavailable_nodes'])}"
        lines.append(["Hubble Relay:", "Errors", f"{relay['address']}: {detail}"])
    lines.append(_proxy_line(nodes))
    rows = [["NODE", "AGENT", "ENDPOINTS", "POLICIES", "IDENTITIES", "FLOWS", "KVSTORE"]]
    for n in nodes:
        if not n.get("pid"):
            rows.append([n["node"], "Unreachable", "", "", "", "", n.get("error", "")])
            continue
        h = n["hubble"]
        kvs = n.get("cluster", {}).get("kvstore", {})
        rows.append(
            [
                n["node"],
                "OK" if n["ok"] else "; ".join(n["errors"]),
                str(n["endpoints"]),
                str(n["policies"]),
                str(n.get("cluster", {}).get("identities", 0)),
                f"{h['num_flows']}/{h['max_flows']} ({h['seen_flows']} seen)",
                "connected" if kvs.get("connected") else f"disconnected {kvs.get('error', '')}".strip(),
            ]
        )
    return render(lines, padding=1) + "\n" + render(rows)


@click.command()
@click.option("--lab", default=DEFAULT_LAB, envvar="TENDRIL_LAB", show_default=True)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--wait", is_flag=True, help="Wait until every agent, the kvstore and the relay are ready.")
@click.option("--wait-duration", type=float, default=300.0, show_default=True, help="Seconds.")
def status(lab: str, output: str, wait: bool, wait_duration: float) -> None:
    """Agents per node, kvstore, Hubble Relay, endpoints, policies, identities and flows."""
    deadline = time.monotonic() + wait_duration
    st = collect(lab)
    while wait and not st["ok"] and time.monotonic() < deadline:
        time.sleep(1.0)
        st = collect(lab)
    click.echo(json.dumps(st, indent=2) if output == "json" else _summary(st))
    if wait and not st["ok"]:
        click.echo(f"Error: not ready after {wait_duration:.0f}s", err=True)
        sys.exit(1)
