"""The agent's observability outputs besides the Observer: Prometheus endpoints and the flow file.

Each is optional and fed from the same parsed rows (an EventPump sink), so enabling one never
changes what another sees.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry

from tendril.agent.prom import AgentMetrics
from tendril.common.errors import InvalidInputError
from tendril.hubble.metrics import HubbleMetrics, parse_listen_address, serve_metrics

if TYPE_CHECKING:
    from tendril.agent.daemon import Agent

log = logging.getLogger(__name__)


def flow_json_line(row: np.void, tables: Any) -> str:
    """One `hubble observe -o json` line (a GetFlowsResponse) for a stored row."""
    from tendril.hubble.api import jsonpb, observer_pb2
    from tendril.hubble.convert import row_to_proto

    f = row_to_proto(row, tables)
    return jsonpb.dumps(observer_pb2.GetFlowsResponse(flow=f, node_name=f.node_name, time=f.time))


class Observability:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        cfg = agent.config
        self.servers: list[Any] = []
        try:
            self.hubble = HubbleMetrics(cfg.hubble_metrics) if cfg.hubble_metrics else None
        except ValueError as e:
            raise InvalidInputError(f"--hubble-metrics: {e}") from None
        self.exporter = None
        if cfg.hubble_export_file:
            from tendril.hubble.exporter import FileExporter

            self.exporter = FileExporter(
                cfg.hubble_export_file,
                max_size_bytes=cfg.hubble_export_file_max_size_mb << 20,
                max_backups=cfg.hubble_export_file_max_backups,
            )
        self.agent_registry = CollectorRegistry()
        self.agent_registry.register(
            AgentMetrics(
                datapath_totals=agent.datapath.metrics_totals,
                endpoints=agent.endpoint_list,
                map_usage=agent.map_usage,
                extra=agent.metrics_extra,
            )
        )

    def attach(self) -> None:
        pump = self.agent.pump
        if self.hubble is not None:
            hubble = self.hubble
            pump.sinks.append(lambda rows: hubble.process(rows, self.agent.tables))
            self.agent.lost_hooks.append(hubble.lost)
            self.agent.endpoints.on_delete.append(hubble.endpoint_deleted)
        if self.exporter is not None:
            exporter = self.exporter

            def export(rows: np.ndarray) -> None:
                exporter.write_rows(rows, self.agent.tables, flow_json_line)
                exporter.flush()

            pump.sinks.append(export)

    def serve(self) -> None:
        cfg = self.agent.config
        if self.hubble is not None and cfg.hubble_metrics_server:
            self.servers.append(
                serve_metrics(self.hubble.registry, *parse_listen_address(cfg.hubble_metrics_server))
            )
        if cfg.prometheus_serve_addr:
            self.servers.append(
                serve_metrics(self.agent_registry, *parse_listen_address(cfg.prometheus_serve_addr))
            )

    def close(self) -> None:
        for s in self.servers:
            s.close()
        if self.exporter is not None:
            self.exporter.close()

    def expire(self) -> None:
        if self.hubble is not None:
            self.hubble.expire()
