"""A node's static configuration: its name, namespace and address plan.

`tendril lab up` writes it to /var/run/tendril/<node>/node.json; `tendril agent --node NAME` reads
it, and flags can override it for agents run by hand.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass

from tendril.common import paths
from tendril.common.errors import TendrilError
from tendril.common.jsonfile import read_json, write_json


@dataclass
class NodeConfig:
    name: str
    netns: str | None = None  # the node's network namespace (None: the agent's current one)
    index: int = 1
    pod_cidr_v4: str = "10.244.1.0/24"
    pod_cidr_v6: str = "fd00:10:244:1::/64"
    underlay_ip: str = ""
    mtu: int = 1500
    lab: str = ""
    ring_bytes: int = 4 << 20
    trace_level: str = "medium"  # all | medium | none (Cilium monitor aggregation none/medium/drops only)
    hubble_buffer_capacity: int = 65535  # flows kept in the agent's ring (2^n - 1)
    hubble_listen_address: str = ":4244"  # TCP for the Observer, in the node's netns ("" = off)
    hubble_metrics_server: str = ":9965"
    hubble_metrics: str = ""  # Hubble's syntax, e.g. "flow drop tcp:sourceContext=pod"; "" = off
    prometheus_serve_addr: str = ":9962"  # agent metrics ("" = off)
    bpf_lb_algorithm: str = "random"  # random | maglev (per service: service.cilium.io/lb-algorithm)
    bpf_lb_maglev_table_size: int = 16381  # a prime, as Cilium's --bpf-lb-maglev-table-size
    underlay_ip6: str = ""
    cluster: str = "default"  # the cluster's name (Hubble TLS server names, etcd keys are per store)
    routing: str = "native"  # native | vxlan (between nodes)
    kvstore: str = ""  # "" / "embedded": in-process store; "etcd://host:port" for many nodes
    kvstore_lease_ttl: float = 10.0  # seconds until a dead agent's node, endpoints and refs expire
    hubble_tls_dir: str = ""  # CA + node certificates: the TCP Observer then requires mTLS
    hubble_export_file: str = ""
    hubble_export_file_max_size_mb: int = 10
    hubble_export_file_max_backups: int = 5
    proxy_port: int = 15080  # the node's transparent L7 proxy (0 = none: HTTP rules not enforced)
    tofqdns_min_ttl: int = 3600  # Cilium's --tofqdns-min-ttl: the least time a toFQDNs IP is kept
    dns_proxy_port: int = 15053  # the node's DNS proxy, UDP and TCP (0 = none: DNS rules not enforced)
    cpu_nice: int = -5  # the agent's session's CPU weight against each pod's (autogroup nice; 0 = equal)

    @property
    def router_v4(self) -> str:
        return str(next(ipaddress.IPv4Network(self.pod_cidr_v4).hosts()))

    @property
    def router_v6(self) -> str:
        return str(ipaddress.IPv6Network(self.pod_cidr_v6).network_address + 1)

    def save(self) -> None:
        write_json(paths.node_config_file(self.name), asdict(self))

    @classmethod
    def load(cls, node: str) -> NodeConfig:
        data = read_json(paths.node_config_file(node))
        if data is None:
            return cls(name=node)
        try:
            return cls(**data)
        except TypeError as e:
            raise TendrilError(f"{paths.node_config_file(node)}: {e}") from None


TRACE_LEVELS = {"all": 0, "medium": 1, "none": 2}
ROUTING_MODES = ("native", "vxlan")
