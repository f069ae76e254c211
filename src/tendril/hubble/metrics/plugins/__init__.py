"""Hubble metrics plugins by `--hubble-metrics` name (one module per plugin, as cilium pkg/hubble/metrics)."""

from __future__ import annotations

from tendril.hubble.metrics.plugins.base import Plugin
from tendril.hubble.metrics.plugins.drop import DropPlugin
from tendril.hubble.metrics.plugins.flow import FlowPlugin
from tendril.hubble.metrics.plugins.icmp import IcmpPlugin
from tendril.hubble.metrics.plugins.l7 import DnsPlugin, HttpPlugin, HttpV2Plugin, KafkaPlugin
from tendril.hubble.metrics.plugins.policy import PolicyPlugin
from tendril.hubble.metrics.plugins.ports import PortDistributionPlugin
from tendril.hubble.metrics.plugins.tcp import TcpPlugin
from tendril.hubble.metrics.plugins.world import FlowsToWorldPlugin

PLUGINS: dict[str, type[Plugin]] = {
    p.name: p
    for p in (
        FlowPlugin,
        DropPlugin,
        TcpPlugin,
        IcmpPlugin,
        PortDistributionPlugin,
        FlowsToWorldPlugin,
        PolicyPlugin,
        DnsPlugin,
        HttpPlugin,
        HttpV2Plugin,
        KafkaPlugin,
    )
}

__all__ = ["PLUGINS", "Plugin"]
