"""Running the suite: selection (--test), order, concurrency, checks, and clean-up.

One test at a time (its policies would disturb the others), its actions concurrently on a thread
pool, except actions whose connections could be mistaken for each other in the flows (same
source, overlapping destinations and ports), which run one after another. Whatever happens,
Ctrl-C included, the test's policies, the deployment (unless kept) and the world servers go.
"""

from __future__ import annotations

import contextlib
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tendril.cli.client import AgentClient, cluster_write
from tendril.common.errors import InvalidInputError, TendrilError
from tendril.connectivity import deploy as dep
from tendril.connectivity import metrics as met
from tendril.connectivity import policies as pol
from tendril.connectivity.actions import execute
from tendril.connectivity.flows import Relay, validate
from tendril.connectivity.model import (
    EXIT_ANY_ERROR,
    EXIT_CURL_HTTP_ERROR,
    Action,
    ActionOutcome,
    Destination,
    ScenarioOutcome,
    TestCase,
    TestOutcome,
)
from tendril.connectivity.report import Console
from tendril.connectivity.suite import catalogue

FLOW_VALIDATION_MODES = ("strict", "warning", "disabled")


@dataclass
class Options:
    lab: str
    tests: tuple[str, ...] = ()
    namespace: str = dep.NAMESPACE
    keep: bool = False
    connect_timeout: float = 2.0
    request_timeout: float = 5.0
    flow_validation: str = "strict"
    concurrency: int = 8
    flow_wait: float = 3.0  # how long flows may take to reach the relay after a command ends
    print_flows: bool = False


# ---- selection -----------------------------------------------------------------------------


class Selection:
    """cilium-cli's --test: regular expressions matched against "test" and "test/scenario"; a
    leading '!' excludes. A test runs if any of its scenarios is enabled."""

    def __init__(self, patterns: tuple[str, ...] | list[str]) -> None:
        self.run: list[re.Pattern[str]] = []
        self.skip: list[re.Pattern[str]] = []
        for p in patterns:
            negate = p.startswith("!")
            expr = p[1:] if negate else p
            try:
                rx = re.compile(expr)
            except re.error as e:
                raise InvalidInputError(f"--test {p!r}: invalid regular expression: {e}") from None
            (self.skip if negate else self.run).append(rx)

    def enabled(self, name: str) -> bool:
        if any(rx.search(name) for rx in self.skip):
            return False
        if any(rx.search(name) for rx in self.run):
            return True
        return not self.run


def plan(tests: list[TestCase], selection: Selection) -> list[TestOutcome]:
    """Which tests run, which are skipped and why (in catalogue order, numbered)."""
    out = []
    for i, t in enumerate(tests, 1):
        o = TestOutcome(t.name, index=i)
        selected = any(selection.enabled(f"{t.name}/{s.name}") for s in t.scenarios) or (
            not t.scenarios and selection.enabled(t.name)
        )
        if not selected:
            o.skip_reason, o.user_skipped = "skipped by user", True
        elif t.skip_reason:
            o.skip_reason = t.skip_reason
        out.append(o)
    return out


def list_tests(selection: Selection) -> list[tuple[str, str]]:
    """(name, "" or why it would be skipped) of every test."""
    cases = catalogue()
    return [(o.name, o.skip_reason) for o in plan(cases, selection)]


# ---- policies ------------------------------------------------------------------------------

PolicyName = tuple[str, str | None, str]  # kind, namespace, name


def _policies_on(node: str) -> set[PolicyName]:
    with AgentClient(node) as c:
        docs = [p["document"] for p in c.get("/v1/policies")["policies"]]
    return {(d["kind"], d.get("metadata", {}).get("namespace"), d["metadata"]["name"]) for d in docs}


def _wait_policies(lab: dep.Lab, names: list[PolicyName], present: bool, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(lab.node_names)
    while pending:
        pending = [n for n in pending if any((x in _policies_on(n)) != present for x in names)]
        if not pending:
            return
        if time.monotonic() > deadline:
            what = "applied" if present else "removed"
            raise TendrilError(f"policies not {what} on {', '.join(pending)} after {timeout:.0f}s")
        time.sleep(0.1)


def apply_policies(lab: dep.Lab, text: str) -> list[PolicyName]:
    names = pol.names(text)
    r = cluster_write(
        lab.node_names, "PUT", "/v1/policies", {"text": text, "source": "tendril connectivity test"}
    )
    for ep, err in r.get("errors", {}).items():
        raise TendrilError(f"policy not applied to endpoint {ep}: {err}")
    _wait_policies(lab, names, present=True)
    return names


def delete_policies(lab: dep.Lab, names: list[PolicyName]) -> None:
    """Delete on one agent (which publishes the deletions), then wait until no node has them."""
    with AgentClient(lab.node_names[0]) as c:
        for kind, ns, name in names:
            with dep.ignore_missing():
                c.delete(f"/v1/policies/{kind}/{ns or '-'}/{name}")
    _wait_policies(lab, names, present=False)


# ---- one action ----------------------------------------------------------------------------


class Runner:
    def __init__(self, opts: Options, console: Console) -> None:
        self.opts = opts
        self.console = console
        self.relay: Relay | None = None
        self.lab: dep.Lab | None = None
        self.deployment: dep.Deployment | None = None
        self.world: dep.World | None = None
        self.owns_namespace = False  # set once the namespace is known to be the test's own
        self.applied: list[PolicyName] = []
        self.baseline: dict[str, dict[str, Any]] = {}  # node -> metrics at the start of the run
        self.meta: dict[str, Any] = {}

    # -- actions --

    def run_action(self, action: Action) -> ActionOutcome:
        o = ActionOutcome(action)
        before = self._scrape_for(action) if action.metrics else {}
        res = execute(action, self.opts.connect_timeout, self.opts.request_timeout)
        o.command = res
        expected = action.expected_exit_code()
        detail = (res.stderr.strip().splitlines() or [""])[-1]
        if expected == 0 and res.exit_code != 0:
            o.failures.append(f'command "{res.command}" failed: exit code {res.exit_code}' + _paren(detail))
        elif expected != 0 and res.exit_code == 0:
            o.failures.append(
                f'command "{res.command}" succeeded while it should have failed ({_expected(action)})'
                + _paren(res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "")
            )
        elif expected > 0 and res.exit_code != expected:
            o.failures.append(
                f'command "{res.command}" failed with exit code {res.exit_code}, expected {expected}'
                + _paren(detail)
            )
        status = action.expected_http_status()
        if status and res.exit_code in (0, EXIT_CURL_HTTP_ERROR) and res.http_code != status:
            o.failures.append(
                f'command "{res.command}" returned HTTP status {res.http_code or "none"}, expected {status}'
            )
        if action.metrics:
            self._check_metrics(o, before)
        if self.relay is not None:
            v = validate(self.relay, action, res, self.opts.flow_wait)
            o.validation = v
            problems = _flow_problems(action, v)
            if self.opts.flow_validation == "strict":
                o.failures.extend(problems)
            else:
                o.warnings.extend(problems)
        return o

    def _nodes_of(self, action: Action) -> list[str]:
        nodes = [getattr(action.source, "node", "")] + [b.node for b in action.destination.backends]
        return sorted({n for n in nodes if n})

    def _scrape_for(self, action: Action) -> dict[str, Any]:
        assert self.lab is not None
        ips = {n["name"]: n["underlay_ip"] for n in self.lab.nodes}
        out = {}
        for node in self._nodes_of(action):
            try:
                out[node] = met.scrape(ips[node])
            except TendrilError as e:
                out[node] = e
        return out

    def _check_metrics(self, o: ActionOutcome, before: dict[str, Any]) -> None:
        after = self._scrape_for(o.action)
        for node in self._nodes_of(o.action):
            for name in o.action.metrics:
                b, a = before.get(node), after.get(node)
                if isinstance(b, Exception) or isinstance(a, Exception):
                    o.failures.append(f"metrics of node {node}: {b if isinstance(b, Exception) else a}")
                    continue
                vb, va = met.total(b or {}, name), met.total(a or {}, name)
                o.metrics[f"{node}/{name}"] = {"before": vb, "after": va}
                if va <= vb:
                    o.failures.append(f"metric {name} did not increase on node {node} ({vb:g} -> {va:g})")

    # -- a test --

    def run_test(self, case: TestCase, t: TestOutcome, selection: Selection) -> None:
        d = self.deployment
        assert d is not None and self.lab is not None
        start = time.monotonic()
        actions: list[Action] = []
        for s in case.scenarios:
            so = ScenarioOutcome(s.name)
            t.scenarios.append(so)
            if not selection.enabled(f"{case.name}/{s.name}"):
                so.skip_reason = "skipped by user"
            elif len(self.lab.nodes) < s.min_nodes:
                so.skip_reason = f"requires {s.min_nodes} nodes"
            if so.skip_reason:
                continue
            for a in s.build(d, case.name, s.name):
                a.egress, a.ingress = case.expect(a)
                a.metrics = list(case.metrics)
                actions.append(a)
        try:
            if case.policies:
                text = "---\n".join(pol.render(p, d) for p in case.policies)
                self.applied = pol.names(text)  # before applying: a partial apply is cleaned up too
                t.policies = [f"{k}/{n}" for k, _, n in self.applied]
                apply_policies(self.lab, text)
            t.timings["policies_applied_s"] = time.monotonic() - start
            results = self._run_actions(actions, case.sequential)
            t.timings["actions_done_s"] = time.monotonic() - start
        finally:
            if self.applied:
                try:
                    delete_policies(self.lab, self.applied)
                    self.applied = []
                except TendrilError as e:
                    t.errors.append(f"removing the test's policies: {e}")
        by_scenario = {so.name: so for so in t.scenarios}
        for a in actions:
            by_scenario[a.scenario].actions.append(results[id(a)])
        t.duration = time.monotonic() - start

    def _run_actions(self, actions: list[Action], sequential: bool) -> dict[int, ActionOutcome]:
        groups = [actions] if sequential else conflict_groups(actions)
        results: dict[int, ActionOutcome] = {}

        def run_group(group: list[Action]) -> None:
            for a in group:
                try:
                    results[id(a)] = self.run_action(a)
                except Exception as e:  # one broken action must not take the run (and clean-up) down
                    results[id(a)] = ActionOutcome(a, failures=[f"internal error: {e!r}"])

        pool = ThreadPoolExecutor(max_workers=max(1, min(self.opts.concurrency, len(groups))))
        futures: list[Future[None]] = []
        try:
            futures = [pool.submit(run_group, g) for g in groups]
            for f in futures:
                f.result()
        finally:
            pool.shutdown(wait=not any(not f.done() for f in futures), cancel_futures=True)
        return results

    # -- the final check --

    def run_final(self, t: TestOutcome) -> None:
        assert self.lab is not None
        so = ScenarioOutcome(t.name)
        t.scenarios.append(so)
        for h in self.lab.hosts():
            dst = Destination(kind="metrics", name=met.DROP_COUNT, address=h.ip, port=met.AGENT_METRICS_PORT)
            a = Action(t.name, so.name, h.node, h, dst, "metrics")
            o = ActionOutcome(a)
            try:
                after = met.scrape(h.ip)
            except TendrilError as e:
                o.failures.append(str(e))
                so.actions.append(o)
                continue
            before = self.baseline.get(h.node, {})
            o.metrics = {
                "drops_before": met.drops_by_reason(before),
                "drops_after": met.drops_by_reason(after),
            }
            for reason, n in met.unexpected_drops(before, after).items():
                o.failures.append(f"unexpected packet drops on node {h.node}: {reason!r} +{n:g} packets")
            so.actions.append(o)

    # -- the whole run --

    def run(self) -> list[TestOutcome]:
        opts, console = self.opts, self.console
        selection = Selection(opts.tests)  # a bad --test fails before anything else
        cases = catalogue()
        outcomes = plan(cases, selection)
        from tendril.common.errors import require_root

        require_root("connectivity test")
        self.lab = lab = dep.load_lab(opts.lab)
        self.meta = {
            "lab": lab.name,
            "namespace": opts.namespace,
            "nodes": lab.node_names,
            "routing": lab.routing,
            "flow_validation": opts.flow_validation,
            "hubble_relay": None,
        }
        started = time.monotonic()
        try:
            self._setup_hubble()
            to_run = [(c, o) for c, o in zip(cases, outcomes, strict=True) if o.ran]
            if to_run:
                self._setup_deployment()
                console.progress(f"🏃 [{lab.name}] Running {len(to_run)} tests ...")
            total = len(outcomes)
            for case, o in zip(cases, outcomes, strict=True):
                if not o.ran:
                    if not o.user_skipped:
                        console.test_skipped(o, total)
                    continue
                console.test_header(o, total)
                if case.final:
                    self.run_final(o)
                else:
                    try:
                        self.run_test(case, o, selection)
                    except TendrilError as e:
                        o.errors.append(str(e))
                console.test_body(o)
        finally:
            self.meta["duration_s"] = round(time.monotonic() - started, 3)
            self.cleanup()
        return outcomes

    def _setup_hubble(self) -> None:
        lab, console = self.lab, self.console
        assert lab is not None
        if self.opts.flow_validation == "disabled":
            console.progress("ℹ️  Flow validation disabled (--flow-validation=disabled)")
            return
        console.progress("🔭 Enabling Hubble telescope...")
        why = "the lab runs no Hubble Relay"
        if lab.relay_port:
            relay = Relay(f"127.0.0.1:{lab.relay_port}")
            why = relay.wait_ready(len(lab.nodes))
            if not why:
                self.relay = relay
                connected, _, flows = relay.status()
                console.progress(f"ℹ️  Hubble is OK, {connected} node(s) connected, flows: {flows}")
                self.meta["hubble_relay"] = relay.address
                return
            relay.close()
        console.progress(
            f"⚠️  Unable to contact Hubble Relay ({why}), disabling Hubble telescope and flow validation"
        )
        console.progress(f"ℹ️  Start the lab's relay with: tendril lab up --name {lab.name} --relay-port 4245")
        self.meta["flow_validation"] = "disabled"

    def _setup_deployment(self) -> None:
        lab, console, opts = self.lab, self.console, self.opts
        assert lab is not None
        dep.check_namespace(lab, opts.namespace)
        self.owns_namespace = True
        self.world = dep.World(lab)
        console.progress(
            f"✨ [{lab.name}] Starting the world: http-echo on {dep.EXTERNAL_CIDR} ports "
            f"{', '.join(map(str, dep.WORLD_PORTS))} in {self.world.netns}..."
        )
        with ThreadPoolExecutor(max_workers=1) as pool:
            world = pool.submit(self.world.start)
            try:
                self.deployment = dep.deploy(lab, opts.namespace, console.progress)
            finally:
                world.result()
        leftovers = dep.delete_policies(lab, opts.namespace)
        if leftovers:
            console.progress(
                f"🔥 [{lab.name}] Deleted policies left in {opts.namespace}: {', '.join(leftovers)}"
            )
        dep.wait_ready(self.deployment, console.progress)
        for h in lab.hosts():
            with contextlib.suppress(TendrilError):
                self.baseline[h.node] = met.scrape(h.ip)

    def cleanup(self) -> None:
        lab, console = self.lab, self.console
        if lab is None:
            return
        steps = []
        if self.applied:
            steps.append(("removing the test's policies", lambda: delete_policies(lab, self.applied)))
        if self.world is not None:
            steps.append(("stopping the world's http-echo", self.world.stop))
        if self.owns_namespace:
            if self.opts.keep:
                console.progress(f"ℹ️  [{lab.name}] Keeping namespace {self.opts.namespace} (--keep)")
            else:
                steps.append(
                    (
                        "deleting the deployment",
                        lambda: dep.teardown(lab, self.opts.namespace, console.progress),
                    )
                )
        for what, fn in steps:
            try:
                fn()
            except (TendrilError, OSError) as e:
                console.progress(f"⚠️  [{lab.name}] Clean-up: {what} failed: {e}")
        self.applied = []
        if self.relay is not None:
            self.relay.close()


def conflict_groups(actions: list[Action]) -> list[list[Action]]:
    """Actions whose flows could be confused (same source, overlapping addresses and ports) end
    up in one group, run in order; groups run concurrently."""
    parent = list(range(len(actions)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def overlap(a: Action, b: Action) -> bool:
        if a.source.key != b.source.key or a.protocol != b.protocol:
            return False
        if not a.destination.addresses & b.destination.addresses:
            return False
        return a.protocol != "tcp" or bool(a.destination.ports & b.destination.ports)

    for i in range(len(actions)):
        for j in range(i):
            if overlap(actions[i], actions[j]):
                parent[find(i)] = find(j)
    groups: dict[int, list[Action]] = {}
    for i, a in enumerate(actions):
        groups.setdefault(find(i), []).append(a)
    return list(groups.values())


def _paren(text: str) -> str:
    return f" ({text})" if text else ""


def _expected(a: Action) -> str:
    code = a.expected_exit_code()
    return "expected a failure" if code == EXIT_ANY_ERROR else f"expected exit code {code}"


def _flow_problems(action: Action, v: Any) -> list[str]:
    """One line per side whose flows do not fit: what is missing, what should not be there."""
    if v.error:
        return [f"📄 Flow validation failed: {v.error}"]
    if not v.flows and any(r.present for r in v.requirements):
        return [f"📄 No flows recorded for peer {action.source.key} during action {action.name}"]
    out = []
    sides: dict[tuple[str, str], list[Any]] = {}
    for r in v.failures():
        sides.setdefault((r.side, r.peer), []).append(r)
    for (side, peer), failed in sides.items():
        parts = []
        missing = [r.msg for r in failed if r.present]
        if missing:
            parts.append(f"no {', '.join(missing)} flow recorded")
        for r in failed:
            if not r.present:
                seen = sorted({_verdict(f) for f in r.matched})
                parts.append(f"unexpected {r.msg} flow: {', '.join(seen)}")
        out.append(f"📄 Flow validation failed for peer {peer} ({side}): {'; '.join(parts)}")
    return out


def _verdict(f: Any) -> str:
    if f.event_type == 5:  # a policy verdict
        return f"policy-verdict {'DENIED' if f.verdict == 'DROPPED' else 'ALLOWED'} on {f.node}"
    if f.verdict == "DROPPED":
        return f"DROPPED ({f.drop_reason}) on {f.node}"
    return f"{f.verdict} on {f.node}"
