"""Agent metrics for metric checks: each node's Prometheus endpoint (:9962 on its underlay address).

Two uses, as in cilium-cli: an action may require a counter (tendril_forward_count_total, Cilium's
cilium_forward_count_total) to increase on the nodes it involves, and the run requires the
datapath's drop counters for reasons other than the expected ones not to move.
"""

from __future__ import annotations

from collections import defaultdict

from tendril.common.errors import TendrilError

AGENT_METRICS_PORT = 9962
FORWARD_COUNT = "tendril_forward_count_total"
DROP_COUNT = "tendril_drop_count_total"
# Drops a policy test causes on purpose (cilium-cli's default --expected-drop-reasons has more,
# for features the lab does not have).
EXPECTED_DROP_REASONS = ("Policy denied", "Policy denied by denylist")

Sample = dict[tuple[tuple[str, str], ...], float]  # labels -> value


def scrape(ip: str, timeout: float = 5.0) -> dict[str, Sample]:
    """name -> {labels: value} of every sample the node's agent exposes."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://{ip}:{AGENT_METRICS_PORT}/metrics"
    try:
        text = httpx.get(url, timeout=timeout).text
    except httpx.HTTPError as e:
        raise TendrilError(f"cannot scrape agent metrics at {url}: {e}") from None
    out: dict[str, Sample] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return dict(out)


def total(samples: dict[str, Sample], name: str) -> float:
    return sum(samples.get(name, {}).values())


def drops_by_reason(samples: dict[str, Sample]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for labels, value in samples.get(DROP_COUNT, {}).items():
        out[dict(labels).get("reason", "")] += value
    return dict(out)


def unexpected_drops(
    before: dict[str, Sample], after: dict[str, Sample], expected: tuple[str, ...] = EXPECTED_DROP_REASONS
) -> dict[str, float]:
    """reason -> packets dropped between the two scrapes, for reasons not expected."""
    b, a = drops_by_reason(before), drops_by_reason(after)
    return {r: v - b.get(r, 0.0) for r, v in sorted(a.items()) if r not in expected and v > b.get(r, 0.0)}
