"""Agent metrics (tendril_*, Cilium's names) from hand-made sources, read back as Prometheus parses them."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tendril.agent.prom import AgentMetrics


def scrape(registry: CollectorRegistry) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    out: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def L(**labels: str) -> frozenset[tuple[str, str]]:  # noqa: N802 - reads like a label literal
    return frozenset(labels.items())


class Sources:
    """Mutable stand-ins for the datapath, the endpoint table and the map reader."""

    def __init__(self) -> None:
        self.totals: list[tuple[Any, Any, int, int]] = [
            (0, 1, 100, 6000),
            (0, 2, 50, 3000),
            (133, 1, 7, 420),
            (132, 2, 3, 180),
            ("Policy denied", "egress", 2, 120),
        ]
        self.eps: list[dict[str, Any]] = [
            {"id": 1, "state": "ready"},
            {"id": 2, "state": "ready"},
            {"id": 3, "state": "waiting-for-identity"},
        ]
        self.maps = [
            ("tnd_ct4", 16384, 65536),
            ("tnd_lb4", 0, 65536),
            ("tnd_policy_00042", 4096, 16384),
            ("x", 1, 0),
        ]
        self.gc_runs = 3

    def extra(self) -> dict[str, Any]:
        return {
            "datapath_conntrack_gc_runs_total": [({"status": "completed"}, self.gc_runs)],
            "tendril_hubble_flows_seen": 1234,
            "bad name!": 1,
        }

    def collector(self, registry: CollectorRegistry) -> AgentMetrics:
        return AgentMetrics(
            lambda: self.totals, lambda: self.eps, lambda: self.maps, self.extra, registry=registry
        )


def test_datapath_counters_use_cilium_reason_text_and_direction() -> None:
    reg = CollectorRegistry()
    Sources().collector(reg)
    got = scrape(reg)
    assert got["tendril_drop_count_total"] == {
        L(reason="Policy denied", direction="INGRESS"): 7,
        L(reason="Policy denied", direction="EGRESS"): 2,
        L(reason="Invalid source ip", direction="EGRESS"): 3,
    }
    assert got["tendril_drop_bytes_total"] == {
        L(reason="Policy denied", direction="INGRESS"): 420,
        L(reason="Policy denied", direction="EGRESS"): 120,
        L(reason="Invalid source ip", direction="EGRESS"): 180,
    }
    assert got["tendril_forward_count_total"] == {L(direction="INGRESS"): 100, L(direction="EGRESS"): 50}
    assert got["tendril_forward_bytes_total"] == {L(direction="INGRESS"): 6000, L(direction="EGRESS"): 3000}


def test_endpoint_gauges_count_states_including_empty_ones() -> None:
    reg = CollectorRegistry()
    Sources().collector(reg)
    got = scrape(reg)
    assert got["tendril_endpoint"] == {L(): 3}
    states = got["tendril_endpoint_state"]
    assert states[L(state="ready")] == 2 and states[L(state="waiting-for-identity")] == 1
    assert states[L(state="regenerating")] == 0 and states[L(state="disconnecting")] == 0


def test_map_pressure_and_capacity_groups() -> None:
    reg = CollectorRegistry()
    Sources().collector(reg)
    got = scrape(reg)
    assert got["tendril_bpf_map_pressure"] == {
        L(map_name="tnd_ct4"): 0.25,
        L(map_name="tnd_lb4"): 0.0,
        L(map_name="tnd_policy_00042"): 0.25,
    }
    assert got["tendril_bpf_map_capacity"] == {
        L(map_group="default"): 65536,
        L(map_group="tnd_policy_00042"): 16384,
    }


def test_extra_metrics_get_the_prefix_and_a_type_from_their_name() -> None:
    reg = CollectorRegistry()
    Sources().collector(reg)
    text = generate_latest(reg).decode()
    assert "# TYPE tendril_datapath_conntrack_gc_runs_total counter" in text
    assert "# TYPE tendril_hubble_flows_seen gauge" in text
    got = scrape(reg)
    assert got["tendril_datapath_conntrack_gc_runs_total"] == {L(status="completed"): 3}
    assert got["tendril_hubble_flows_seen"] == {L(): 1234}
    assert not any("bad" in name for name in got)


def test_values_are_read_at_scrape_time_never_stale() -> None:
    reg = CollectorRegistry()
    src = Sources()
    src.collector(reg)
    assert scrape(reg)["tendril_forward_count_total"][L(direction="INGRESS")] == 100
    src.totals[0] = (0, 1, 250, 15000)
    src.eps.pop()
    src.gc_runs = 4
    got = scrape(reg)
    assert got["tendril_forward_count_total"][L(direction="INGRESS")] == 250
    assert got["tendril_endpoint"] == {L(): 2}
    assert got["tendril_datapath_conntrack_gc_runs_total"] == {L(status="completed"): 4}


def test_a_failing_source_drops_only_its_own_metrics(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> list[dict[str, Any]]:
        raise OSError("endpoint table unavailable")

    src = Sources()
    reg = CollectorRegistry()
    AgentMetrics(lambda: src.totals, broken, lambda: src.maps, registry=reg)
    with caplog.at_level(logging.ERROR):
        got = scrape(reg)
    assert (
        "tendril_endpoint" not in got
        and "tendril_drop_count_total" in got
        and "tendril_bpf_map_pressure" in got
    )
    assert "_endpoints failed" in caplog.text


def test_empty_sources_still_expose_the_families() -> None:
    reg = CollectorRegistry()
    AgentMetrics(list, list, list, registry=reg)
    text = generate_latest(reg).decode()
    for family in (
        "tendril_drop_count",
        "tendril_forward_count",
        "tendril_endpoint",
        "tendril_bpf_map_pressure",
    ):
        assert f"# TYPE {family}" in text
    assert scrape(reg)["tendril_endpoint"] == {L(): 0}
