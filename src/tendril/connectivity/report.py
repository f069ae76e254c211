"""Console output in cilium-cli's style, and the machine-readable report (--json)."""

from __future__ import annotations

import threading
import time
from typing import Any, TextIO

from tendril.connectivity.model import Action, ActionOutcome, Host, Pod, TestOutcome


def source_text(src: Pod | Host) -> str:
    if isinstance(src, Pod):
        return f"{src.key} ({src.ipv4})"
    return f"{src.node} ({src.ip})"


def destination_text(a: Action) -> str:
    d = a.destination
    addr = f"[{d.address}]" if ":" in d.address else d.address
    where = f"{addr}:{d.port}" if d.port else addr
    return f"{d.name} ({where})"


def action_line(a: Action) -> str:
    return f"[.] Action [{a.full_name}: {source_text(a.source)} -> {destination_text(a)}]"


class Console:
    """Thread-safe line output (the runner's threads report as they finish)."""

    def __init__(self, out: TextIO, lab: str, print_flows: bool = False) -> None:
        self.out = out
        self.lab = lab
        self.print_flows = print_flows
        self.lock = threading.Lock()

    def line(self, text: str = "") -> None:
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()

    def progress(self, text: str) -> None:
        self.line(text)

    def test_header(self, t: TestOutcome, total: int) -> None:
        self.line(f"[=] [{self.lab}] Test [{t.name}] [{t.index}/{total}]")

    def test_skipped(self, t: TestOutcome, total: int) -> None:
        self.line(f"[=] [{self.lab}] Skipping test [{t.name}] [{t.index}/{total}] ({t.skip_reason})")

    def test_body(self, t: TestOutcome) -> None:
        """Scenarios and actions of a finished test, in order, with what went wrong."""
        lines: list[str] = []
        for err in t.errors:
            lines.append(f"  ❌ {err}")
        for s in t.scenarios:
            if s.skip_reason:
                lines.append(f"  [-] Skipping Scenario [{t.name}/{s.name}] ({s.skip_reason})")
                continue
            lines.append(f"  [-] Scenario [{t.name}/{s.name}]")
            for o in s.actions:
                lines.append(f"  {action_line(o.action)}")
                lines.extend(f"  ❌ {f}" for f in o.failures)
                lines.extend(f"  ⚠️  {w}" for w in o.warnings)
                if (o.failures or o.warnings or self.print_flows) and o.validation is not None:
                    lines.extend(_flow_lines(o))
        with self.lock:
            self.out.write("".join(f"{ln}\n" for ln in lines))
            self.out.flush()

    def summary(self, tests: list[TestOutcome]) -> None:
        s = summarize(tests)
        skipped = f"{s['tests_skipped']} tests skipped, {s['scenarios_skipped']} scenarios skipped"
        self.line()
        if not s["tests_failed"]:
            self.line(f"✅ All {s['tests_run']} tests ({s['actions']} actions) successful, {skipped}.")
            return
        self.line(f"📋 Test Report [{self.lab}]")
        self.line(
            f"❌ {s['tests_failed']}/{s['tests_run']} tests failed "
            f"({s['actions_failed']}/{s['actions']} actions), {skipped}:"
        )
        for t in tests:
            if t.ran and not t.ok:
                self.line(f"Test [{t.name}]:")
                for err in t.errors:
                    self.line(f"  ❌ {err}")
                for o in t.actions():
                    if not o.ok:
                        a = o.action
                        self.line(f"  ❌ {a.full_name}: {source_text(a.source)} -> {destination_text(a)}")
                        for f in o.failures:
                            self.line(f"     {f}")
        n = s["tests_failed"]
        self.line(f"connectivity test failed: {n} test{'s' if n != 1 else ''} failed")


def _flow_lines(o: ActionOutcome) -> list[str]:
    v = o.validation
    if not v.flows:
        return []
    out = [f"  📄 Flows of action {o.action.name} ({len(v.flows)}):"]
    out.extend(f"     {f.line}" for f in v.flows)
    return out


def summarize(tests: list[TestOutcome]) -> dict[str, int]:
    ran = [t for t in tests if t.ran]
    actions = [a for t in ran for a in t.actions()]
    return {
        "tests_run": len(ran),
        "tests_failed": sum(1 for t in ran if not t.ok),
        "tests_skipped": sum(1 for t in tests if not t.ran),
        "scenarios_skipped": sum(1 for t in ran for s in t.scenarios if s.skip_reason),
        "actions": len(actions),
        "actions_failed": sum(1 for a in actions if not a.ok),
    }


# ---- JSON --------------------------------------------------------------------------------------


def _peer_json(p: Pod | Host) -> dict[str, Any]:
    if isinstance(p, Pod):
        return {"kind": "pod", "name": p.key, "node": p.node, "ips": p.ips, "labels": p.labels}
    return {"kind": "host", "name": p.node, "node": p.node, "ips": p.ips}


def _action_json(o: ActionOutcome) -> dict[str, Any]:
    a = o.action
    d = a.destination
    code = a.expected_exit_code()
    out: dict[str, Any] = {
        "name": a.name,
        "id": a.full_name,
        "status": "passed" if o.ok else "failed",
        "protocol": a.protocol,
        "source": _peer_json(a.source),
        "destination": {
            "kind": d.kind,
            "name": d.name,
            "address": d.address,
            "port": d.port,
            "backends": [b.key for b in d.backends],
        },
        "expected": {
            "egress": a.egress.to_json(),
            "ingress": a.ingress.to_json(),
            "exit_code": "non-zero" if code < 0 else code,
        },
    }
    if o.command is not None:
        out["result"] = o.command.to_json()
    v = o.validation
    if v is None:
        out["flows"] = {"checked": False}
    else:
        out["flows"] = {
            "checked": True,
            "ok": v.ok,
            "wait_s": round(v.elapsed, 3),
            "requirements": [
                {
                    "side": r.side,
                    "peer": r.peer,
                    "flow": r.msg,
                    "must_appear": r.present,
                    "ok": r.ok,
                    "matched": len(r.matched),
                }
                for r in v.requirements
            ],  # fmt: skip
            "flows": [
                {
                    "node": f.node,
                    "time": f.time,
                    "type": f.kind,
                    "verdict": f.verdict,
                    "drop_reason": f.drop_reason,
                    "source": f.src_ip,
                    "destination": f.dst_ip,
                    "protocol": f.proto,
                    "source_port": f.sport,
                    "destination_port": f.dport,
                    "tcp_flags": sorted(f.flags),
                    "direction": f.direction,
                    "summary": f.line,
                    **(
                        {
                            "l7": {
                                "type": f.l7_type,
                                "http_code": f.http_code,
                                "method": f.http_method,
                                "url": f.http_url,
                                "dns_query": f.dns_query,
                            }
                        }
                        if f.l7_type
                        else {}
                    ),
                }
                for f in v.flows
            ],  # fmt: skip
        }
        if v.error:
            out["flows"]["error"] = v.error
    if o.metrics:
        out["metrics"] = o.metrics
    out["failures"] = o.failures
    if o.warnings:
        out["warnings"] = o.warnings
    return out


def to_json(tests: list[TestOutcome], meta: dict[str, Any]) -> dict[str, Any]:
    s = summarize(tests)
    doc: dict[str, Any] = dict(meta)
    doc["success"] = s["tests_failed"] == 0
    doc["summary"] = s
    doc["generated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc["tests"] = []
    for t in tests:
        entry: dict[str, Any] = {"name": t.name, "index": t.index}
        if not t.ran:
            entry["status"] = "skipped"
            entry["skip_reason"] = t.skip_reason
        else:
            entry["status"] = "passed" if t.ok else "failed"
            entry["duration_s"] = round(t.duration, 3)
            entry["timings"] = {k: round(v, 3) for k, v in t.timings.items()}
            entry["policies"] = t.policies
            entry["errors"] = t.errors
            entry["scenarios"] = [
                {"name": sc.name, "status": "skipped", "skip_reason": sc.skip_reason}
                if sc.skip_reason
                else {
                    "name": sc.name,
                    "status": "passed" if sc.ok else "failed",
                    "actions": [_action_json(o) for o in sc.actions],
                }
                for sc in t.scenarios
            ]
        doc["tests"].append(entry)
    return doc
