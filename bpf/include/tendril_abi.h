/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The ABI between the kernel datapath and the agent: event layout, map keys
 * and values, settings and numbering. Python mirrors every struct here in
 * src/tendril/bpf/abi.py (numpy dtypes); tests/test_abi.py checks both agree
 * through BTF, so change the two together.
 *
 * Numbering follows Cilium so flows read the same as in Hubble:
 *   event types   = Cilium monitor message types (drop 1, trace 4, ...)
 *   trace points  = Cilium TRACE_* observation points (to-endpoint 0, from-endpoint 5, ...)
 *   drop reasons  = Cilium/Hubble DropReason (132 invalid source IP, 134 invalid packet, ...)
 */
#ifndef TENDRIL_ABI_H
#define TENDRIL_ABI_H

/* ---- event types (Cilium monitor API message types) ---- */
#define TND_EVENT_DROP            1
#define TND_EVENT_TRACE           4
#define TND_EVENT_POLICY_VERDICT  5
#define TND_EVENT_TRACE_SOCK      7   /* socket LB translation (Hubble trace-sock) */

/* ---- trace observation points (Cilium monitor TRACE_*) ---- */
#define TND_TRACE_TO_LXC      0   /* to-endpoint   */
#define TND_TRACE_TO_PROXY    1
#define TND_TRACE_TO_HOST     2
#define TND_TRACE_TO_STACK    3
#define TND_TRACE_TO_OVERLAY  4
#define TND_TRACE_FROM_LXC    5   /* from-endpoint */
#define TND_TRACE_FROM_PROXY  6
#define TND_TRACE_FROM_HOST   7
#define TND_TRACE_FROM_STACK  8
#define TND_TRACE_FROM_OVERLAY 9
#define TND_TRACE_FROM_NETWORK 10
#define TND_TRACE_TO_NETWORK  11

/* ---- drop reasons (Hubble flow.DropReason values) ---- */
#define TND_DROP_INVALID_SOURCE_IP       132
#define TND_DROP_POLICY_DENIED           133
#define TND_DROP_INVALID_PACKET          134
#define TND_DROP_CT_TRUNCATED            135
#define TND_DROP_UNSUPPORTED_L3          139
#define TND_DROP_WRITE_ERROR             141  /* "Error writing to packet" (NAT rewrite failed) */
#define TND_DROP_UNKNOWN_L4              142
#define TND_DROP_NO_TUNNEL_KEY           147  /* "Error retrieving tunnel key" (overlay device)   */
#define TND_DROP_CT_MAP_INSERTION_FAILED 155
#define TND_DROP_INVALID_IPV6_EXTHDR     156
#define TND_DROP_POLICY_DENY             181  /* "Policy denied by denylist": a deny rule matched */
#define TND_DROP_NO_SERVICE_BACKEND      158  /* "Service backend not found" */
#define TND_DROP_NAT_NO_MAPPING          167  /* "No mapping for NAT masquerade": no free NodePort SNAT port */
#define TND_DROP_SOCKET_LOOKUP_FAILED    178  /* "Socket lookup failed": L7 redirect, no proxy listening */
#define TND_DROP_SOCKET_ASSIGN_FAILED    179  /* "Socket assign failed": L7 redirect, bpf_sk_assign failed */

/* ---- security identities (Cilium numbering) ---- */
#define TND_ID_UNKNOWN         0
#define TND_ID_HOST            1
#define TND_ID_WORLD           2
#define TND_ID_UNMANAGED       3
#define TND_ID_HEALTH          4
#define TND_ID_INIT            5
#define TND_ID_REMOTE_NODE     6
#define TND_ID_KUBE_APISERVER  7
#define TND_ID_INGRESS         8
#define TND_ID_CLUSTER_MIN     256        /* label-based identities: 256..65535 */
#define TND_ID_LOCAL_MIN       (1U << 24) /* node-local CIDR identities         */
/* Policy-map key identity that marks "this direction is enforced" (never a real identity). */
#define TND_ID_ENFORCED_MARKER 0xFFFFFFFFU

/* ---- conntrack result / state carried in events and CT entries ---- */
#define TND_CT_NEW          0
#define TND_CT_ESTABLISHED  1
#define TND_CT_REPLY        2
#define TND_CT_RELATED      3

/* CT scope: which program created the entry, seen from the endpoint */
#define TND_CT_EGRESS   1   /* created by traffic leaving the pod  ("OUT") */
#define TND_CT_INGRESS  2   /* created by traffic entering the pod ("IN")  */

/* CT entry flags (tnd_ct_value.flags) */
#define TND_CTF_SEEN_NON_SYN  (1 << 0)
#define TND_CTF_TX_CLOSING    (1 << 1)  /* FIN or RST seen in the original direction */
#define TND_CTF_RX_CLOSING    (1 << 2)  /* FIN or RST seen in the reply direction    */
#define TND_CTF_SEEN_REPLY    (1 << 3)  /* at least one reply-direction packet       */
#define TND_CTF_RST           (1 << 4)

/* CT lifetimes in seconds (Cilium defaults) */
#define TND_CT_LIFETIME_TCP        21600
#define TND_CT_LIFETIME_TCP_SYN       60
#define TND_CT_LIFETIME_TCP_CLOSE     10
#define TND_CT_LIFETIME_NONTCP        60

/* metrics directions (Cilium METRIC_INGRESS / METRIC_EGRESS) */
#define TND_METRIC_INGRESS 1  /* into the pod (to-endpoint)    */
#define TND_METRIC_EGRESS  2  /* out of the pod (from-endpoint) */
/* metrics map index = reason * 4 + direction; reason 0 = forwarded */
#define TND_METRICS_ENTRIES 1024

/* trace aggregation (settings.trace_level) */
#define TND_TRACE_LEVEL_ALL     0  /* an event for every packet                               */
#define TND_TRACE_LEVEL_MEDIUM  1  /* new connection, first reply, TCP SYN/FIN/RST (default)  */
#define TND_TRACE_LEVEL_NONE    2  /* drops only                                               */

/* event flags (tnd_event.flags) */
#define TND_EVF_IS_REPLY     (1 << 0)
#define TND_EVF_IPV6         (1 << 1)
#define TND_EVF_FRAGMENT     (1 << 2)
#define TND_EVF_ICMP_ERROR   (1 << 3)  /* ICMP error: ports/addrs are from the outer header */
#define TND_EVF_INGRESS      (1 << 4)  /* emitted by tnd_to_container (traffic entering the pod) */
#define TND_EVF_POLICY_DENY  (1 << 5)  /* policy verdict: denied (drop follows unless audit)      */
#define TND_EVF_POLICY_AUDIT (1 << 6)  /* policy verdict in audit mode: would deny, let through   */

/* policy verdict events (type TND_EVENT_POLICY_VERDICT): subtype = match type (Hubble's numbering) */
#define TND_MATCH_NONE       0
#define TND_MATCH_L3_ONLY    1  /* peer identity, any port/protocol */
#define TND_MATCH_L3_L4      2  /* peer identity and port           */
#define TND_MATCH_L4_ONLY    3  /* any peer, port                    */
#define TND_MATCH_ALL        4  /* any peer, any port                */
#define TND_MATCH_L3_PROTO   5  /* peer identity and protocol        */
#define TND_MATCH_PROTO_ONLY 6  /* any peer, protocol                */

/* TCP flag bits as on the wire (byte 13 of the TCP header) */
#define TND_TCP_FIN 0x01
#define TND_TCP_SYN 0x02
#define TND_TCP_RST 0x04
#define TND_TCP_PSH 0x08
#define TND_TCP_ACK 0x10
#define TND_TCP_URG 0x20
#define TND_TCP_ECE 0x40
#define TND_TCP_CWR 0x80

/*
 * One ring-buffer record. Fixed size (72 bytes + 8-byte ringbuf header =
 * 80, already 8-aligned) so the agent can decode a batch as one numpy
 * structured array. Addresses are 16 bytes; IPv4 uses the first 4 bytes
 * (network order), the rest zero. Ports are host byte order.
 */
struct tnd_event {
	__u64 ts_ns;        /* bpf_ktime_get_ns() (CLOCK_MONOTONIC)      */
	__u8  type;         /* TND_EVENT_*                               */
	__u8  subtype;      /* drop: reason; trace: observation point    */
	__u8  ip_version;   /* 4 or 6, 0 when not IP (drops of non-IP)   */
	__u8  l4_proto;     /* IPPROTO_*                                 */
	__u8  ct_state;     /* TND_CT_*                                  */
	__u8  tcp_flags;    /* TND_TCP_* as seen on this packet          */
	__u8  icmp_type;
	__u8  icmp_code;
	__u16 sport;        /* TCP/UDP port; ICMP echo id on requests    */
	__u16 dport;        /* TCP/UDP port; ICMP echo id on replies     */
	__u16 ep_id;        /* endpoint ID of the veth that saw it       */
	__u16 flags;        /* TND_EVF_*                                 */
	__u32 ifindex;      /* host-side veth ifindex                    */
	__u32 hash;         /* skb hash, printed as "flow 0x..."         */
	__u32 pkt_len;      /* skb->len                                  */
	__u32 remote_id;    /* peer identity from ipcache (world if none); 0: not IP */
	__u8  saddr[16];
	__u8  daddr[16];
};

/* tnd_endpoint_info.flags */
#define TND_EPF_HTTP_VISIBILITY 0x0001  /* snap HTTP/1.x message starts (visibility.h) */

/*
 * One tnd_payloads record (visibility.h): the first TND_SNAP_LEN bytes of a
 * TCP segment whose payload starts like an HTTP/1.x request or status line,
 * seen on an endpoint with TND_EPF_HTTP_VISIBILITY. Fixed size (192 + 8 =
 * 200) so the agent decodes batches as one numpy array; bytes past cap_len
 * are undefined. Addresses and ports as in struct tnd_event.
 */
#define TND_SNAP_LEN 128

struct tnd_payload {
	__u64 ts_ns;        /* bpf_ktime_get_ns()                        */
	__u16 ep_id;        /* endpoint whose veth saw it                */
	__u16 flags;        /* TND_EVF_INGRESS: entering the pod         */
	__u8  ip_version;
	__u8  pad;
	__u16 cap_len;      /* valid bytes in data                       */
	__u16 sport;
	__u16 dport;
	__u32 remote_id;    /* peer identity                             */
	__u32 seq;          /* TCP sequence number (host order)          */
	__u32 payload_len;  /* TCP payload bytes in this skb             */
	__u8  saddr[16];
	__u8  daddr[16];
	__u8  data[TND_SNAP_LEN];
};

/* Endpoint table, keyed by the host-side veth ifindex. */
struct tnd_endpoint_info {
	__u16 ep_id;
	__u16 flags;        /* TND_EPF_*                                 */
	__u32 identity;     /* the endpoint's own security identity */
	__u8  ipv4[4];      /* the pod's IPv4 (network order), 0 if none */
	__u8  pad1[4];
	__u8  ipv6[16];     /* the pod's IPv6, zero if none              */
};

/* Conntrack key: per endpoint (host veth ifindex), original direction. */
struct tnd_ct_key {
	__u32 ifindex;
	__u8  saddr[16];
	__u8  daddr[16];
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  ip_version;
	__u16 pad0;
};

struct tnd_ct_value {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u64 expires_ns;   /* monotonic ns; the agent's GC deletes entries past it */
	__u64 tx_packets;   /* original direction */
	__u64 tx_bytes;
	__u64 rx_packets;   /* reply direction    */
	__u64 rx_bytes;
	__u8  scope;        /* TND_CT_EGRESS / TND_CT_INGRESS */
	__u8  tx_flags_seen;
	__u8  rx_flags_seen;
	__u8  pad0;
	__u16 flags;        /* TND_CTF_* */
	__u16 ep_id;
};

struct tnd_metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* Agent-written settings, array map with one entry. */
struct tnd_settings {
	__u32 trace_level;      /* TND_TRACE_LEVEL_* */
	__u32 flags;            /* bit 0: source IP verification enabled (default on) */
	__u32 overlay_ifindex;  /* the node's VXLAN device (tnd_vxlan); 0 = no overlay (native routing) */
	__u32 pad;
};
#define TND_SETTINGS_SOURCE_IP_CHECK (1 << 0)
#define TND_SETTINGS_POLICY_AUDIT    (1 << 1)  /* PolicyAuditMode: report would-be policy drops, pass them */

/*
 * ipcache: BPF_MAP_TYPE_LPM_TRIE, IP/prefix -> identity of the peer, like Cilium's. prefixlen counts
 * the 32 bits of pad+family plus the address prefix (32 + 0..32 for IPv4, 32 + 0..128 for IPv6).
 * No entry means world (TND_ID_WORLD).
 */
struct tnd_ipcache_key {
	__u32 prefixlen;
	__u8  pad[3];
	__u8  family;       /* 4 or 6 */
	__u8  addr[16];     /* IPv4 in the first 4 bytes */
};

struct tnd_ipcache_value {
	__u32 identity;
	__be32 tunnel_endpoint;  /* IPv4 underlay address of the node hosting this IP (network order);
	                          * 0 = local, or not reached through the overlay */
	__u16 ep_id;             /* endpoint ID when the IP is a pod of this node, else 0: the L7
	                          * redirect reads the destination's ingress policy (proxy.h) */
	__u16 pad;
};

/*
 * ---- Overlay (VXLAN, Cilium's layout; datapath in bpf/include/overlay.h and bpf/overlay.c) ----
 *
 * Every node has one VXLAN device in collect-metadata ("external") mode, UDP port TND_VXLAN_PORT
 * (Cilium's 8472), learning off, with the same MAC on every node, TND_OVERLAY_MAC (48 bits, most
 * significant byte first on the wire: 02:74:6e:64:00:01), so a decapsulated frame addressed to it is
 * PACKET_HOST on whichever node receives it.
 *
 * Send (tnd_from_container): a packet the egress policy allowed whose destination has an ipcache
 * entry with a tunnel_endpoint, while settings.overlay_ifindex is set, gets inner Ethernet
 * destination TND_OVERLAY_MAC and source = the MAC the pod sent it to (its host veth), tunnel key
 * {remote_ipv4 = tunnel_endpoint, tunnel_id (VNI) = the source endpoint's identity, ttl 64, UDP
 * checksum 0}, a trace event at TND_TRACE_TO_OVERLAY instead of FROM_LXC, and is redirected to the
 * overlay device. The VNI is 24 bits: identities of endpoints must stay below 2^24.
 *
 * Receive (tnd_from_overlay, tc ingress of the VXLAN device): source identity = the VNI, with the
 * reserved HOST (1) read as REMOTE_NODE (6) and 0 as WORLD (2); it is handed to tnd_to_container in
 * skb->mark = identity << TND_MARK_IDENTITY_SHIFT | TND_MARK_MAGIC_IDENTITY, which uses it as the
 * peer identity (policy and events) instead of an ipcache lookup of the source, then clears the mark.
 */
#define TND_VXLAN_PORT            8472
#define TND_OVERLAY_MAC           0x02746e640001     /* 02:74:6e:64:00:01 (a long literal) */
#define TND_MARK_MAGIC_MASK       0xFF
#define TND_MARK_MAGIC_IDENTITY   0xE5               /* low byte of skb->mark: identity above it */
#define TND_MARK_IDENTITY_SHIFT   8

/*
 * ---- L7 proxy (bpf/include/proxy.h) ----
 * A packet the policy redirects to the node's transparent proxy is assigned to the proxy's socket
 * (bpf_sk_assign) and marked TND_MARK_MAGIC_TO_PROXY (low byte); the agent routes marked packets to
 * the local stack (`ip rule fwmark 0xe6/0xff lookup TND_PROXY_ROUTE_TABLE`, table with
 * `local default dev lo`). The proxy marks its own sockets TND_MARK_MAGIC_FROM_PROXY (SO_MARK), so
 * tnd_to_container reports what it sends at TND_TRACE_FROM_PROXY.
 */
#define TND_MARK_MAGIC_TO_PROXY   0xE6
#define TND_MARK_MAGIC_FROM_PROXY 0xE7
#define TND_PROXY_ROUTE_TABLE     2004

/*
 * Policy: tnd_policy is an ARRAY_OF_MAPS indexed by endpoint ID; each inner map is an LPM trie of
 * tnd_policy_key -> tnd_policy_value for that endpoint. The agent builds a complete new inner map
 * and swaps it in with one update, so no packet ever sees half a policy. Lookups happen twice per
 * packet: with the peer's identity and with identity 0 (any peer); a DENY from either wins, else an
 * ALLOW from either, else the direction's default (deny when enforced). prefixlen covers identity
 * (32) + egress (8), then optionally protocol (8) and the leading bits of the port (0..16), so a
 * port range is a handful of prefixes and the longest (most specific) match wins within a lookup;
 * the agent resolves deny-over-allow across specificities before writing. The entry
 * {identity TND_ID_ENFORCED_MARKER, egress, proto 0, port 0, prefixlen 64} present = that direction
 * is enforced (default deny). An entry without TND_POLICY_DENY allows. ICMP/ICMPv6 packets are
 * looked up with their ICMP type as dport (Cilium's ICMP rules), other port-less protocols with
 * port 0. Inner maps must be LPM tries with BPF_F_NO_PREALLOC, key 12 and value 8 bytes
 * (tendril.bpf.create_policy_map).
 * Datapath rules (exemptions, verdict events, audit): bpf/include/policy.h.
 */
struct tnd_policy_key {
	__u32 prefixlen;
	__u32 identity;     /* 0 = any peer */
	__u8  egress;       /* 1 egress (pod -> peer), 0 ingress */
	__u8  proto;        /* 0 = any protocol */
	__be16 dport;       /* network order, so its prefix bits come first */
};

struct tnd_policy_value {
	__u8  flags;        /* TND_POLICY_* */
	__u8  match_type;   /* TND_MATCH_* reported in policy verdict events */
	__be16 proxy_port;  /* L7 redirect: the node proxy's port (network order); 0 = none */
	__u32 rule_ref;     /* agent's id of the rule that produced it (for `bpf policy get`) */
};
#define TND_POLICY_DENY  (1 << 0)
#define TND_POLICY_MAX_ENTRIES 16384  /* per endpoint, like Cilium's bpf-policy-map-max */
#define TND_POLICY_ENDPOINTS   4096   /* outer array size: endpoint IDs 0..4095 */
#define TND_IPCACHE_MAX_ENTRIES 512000

/*
 * ---- Service load balancing (kube-proxy replacement), Cilium's shape ----
 *
 * tnd_lb_services (HASH): tnd_lb_key -> tnd_lb_value. For every frontend (VIP or node address +
 * port + protocol) slot 0 is the service "master" entry (count = number of backends, flags,
 * rev_nat_id, affinity timeout) and slots 1..count hold backend IDs, as `cilium-dbg bpf lb list`
 * shows them (slots use backend_id only; the agent writes the slots before the master entry, so a
 * count never points past them). NodePort services also get a frontend with the all-zero address
 * meaning "any local node address" (the packet LB uses it; the socket LB ignores it). The socket LB
 * translates every exact frontend, whatever its flags (ClusterIP VIPs, and node-address NodePort
 * frontends if the agent writes them); the packet LB only frontends flagged TND_SVC_NODEPORT.
 * tnd_lb_backends (HASH): backend_id -> tnd_lb_backend.
 * tnd_lb_revnat (HASH): rev_nat_id -> tnd_lb_revnat (the frontend, to translate replies back).
 *   Kept by the agent for listings; the datapath does not read it: its reverse translations use
 *   tnd_lb_sock_revnat and tnd_lb_nat, which hold the exact frontend the client used (for a NodePort
 *   reached through the wildcard, the node address it was reached by).
 * tnd_lb_maglev (HASH_OF_MAPS): rev_nat_id -> inner ARRAY (BPF_F_INNER_MAP, any prime size M) of
 *   backend IDs; used when the service has TND_SVC_MAGLEV: backend = table[hash % M].
 * tnd_lb_affinity (LRU_HASH): tnd_lb_affinity_key -> tnd_lb_affinity_value (sessionAffinity ClientIP).
 * tnd_lb_sock_revnat (LRU_HASH): tnd_lb_sock_key -> tnd_lb_sock_value (socket cookie + backend ->
 *   the VIP the application asked for: recvmsg/getpeername show the service address).
 * tnd_lb_nat (LRU_HASH): packet-LB (NodePort) connections, two entries each, written by
 *   tnd_from_netdev: dir TND_LB_NAT_FWD keyed by the client's tuple (client -> frontend, as it
 *   arrives) -> the backend, so every later packet of the connection goes to the same backend; dir
 *   TND_LB_NAT_REV keyed by the reply tuple (backend -> client) -> the frontend address and port the
 *   client used, so tnd_from_container can SNAT the reply back (and redirect it out of ifindex).
 *   Only connections whose backend is a pod of this node (ipcache ep_id) are here.
 * tnd_lb_snat (LRU_HASH): packet-LB (NodePort) connections whose backend is NOT a pod of this node
 *   (on another node, or outside the cluster), SNATed to the node address the client targeted and
 *   a port from TND_LB_SNAT_PORT_MIN..MAX so that the reply comes back through this node. Keys are
 *   tnd_lb_nat_key, two entries per connection, written by tnd_from_netdev: dir TND_LB_NAT_FWD keyed
 *   by the client's tuple (client -> frontend) -> {backend, SNAT address and port}; dir
 *   TND_LB_NAT_REV keyed by the backend's reply tuple (backend -> node address:SNAT port) -> {client
 *   address and port, frontend address and port, ifindex the request came in on}.
 * tnd_lb_cgroups (HASH): cgroup v2 id (the inode number of the pod's cgroup directory, what
 *   bpf_get_current_cgroup_id() returns for its processes) -> tnd_lb_cgroup (the pod's endpoint ID
 *   for socket-LB events; 0 when the cgroup has no entry).
 *
 * Affinity keys: packet LB uses the client address (flags 0); socket LB has no client address yet
 * when connect() runs, so it keys by the client's network namespace (client = bpf_get_netns_cookie()
 * as 8 little-endian bytes, rest zero, flags TND_LB_AFF_NETNS), as Cilium does.
 *
 * Trace-sock events (TND_EVENT_TRACE_SOCK): subtype = TND_XLATE_*; saddr/sport = 0 (socket not bound
 * yet) or the bound source, daddr/dport = the VIP (PRE) or the chosen backend (POST), l4_proto, ep_id
 * of the pod (from tnd_lb_cgroups), hash = the socket cookie's low 32 bits, ifindex and pkt_len 0,
 * remote_id = ipcache identity of daddr, flags as usual. Verdict TRANSLATED in Hubble. Drops of the
 * socket LB (TND_DROP_NO_SERVICE_BACKEND: the service has no backend) have the same fields with the
 * VIP as daddr.
 */
#define TND_XLATE_PRE_FWD   1  /* Hubble SOCK_XLATE_POINT_PRE_DIRECTION_FWD  */
#define TND_XLATE_POST_FWD  2  /* Hubble SOCK_XLATE_POINT_POST_DIRECTION_FWD */
#define TND_XLATE_PRE_REV   3
#define TND_XLATE_POST_REV  4

#define TND_SVC_CLUSTERIP  (1 << 0)
#define TND_SVC_NODEPORT   (1 << 1)
#define TND_SVC_AFFINITY   (1 << 2)  /* sessionAffinity: ClientIP */
#define TND_SVC_MAGLEV     (1 << 3)  /* pick with the Maglev table instead of random */

#define TND_BACKEND_ACTIVE       0
#define TND_BACKEND_TERMINATING  1  /* existing connections finish, new ones never pick it */

struct tnd_lb_key {
	__u8  addr[16];     /* IPv4 in the first 4 bytes; all zero = any local node address (NodePort) */
	__be16 port;
	__u8  proto;        /* IPPROTO_TCP / IPPROTO_UDP */
	__u8  family;       /* 4 or 6 */
	__u16 slot;         /* 0 = master entry, 1..count = backends */
	__u16 pad;
};

struct tnd_lb_value {
	__u32 backend_id;   /* slots > 0 */
	__u16 count;        /* slot 0: number of active backends */
	__u16 rev_nat_id;
	__u32 flags;        /* slot 0: TND_SVC_* */
	__u32 affinity_timeout_s;
};

struct tnd_lb_backend {
	__u8  addr[16];
	__be16 port;
	__u8  proto;
	__u8  family;
	__u8  state;        /* TND_BACKEND_* */
	__u8  pad[3];
};

struct tnd_lb_revnat {
	__u8  addr[16];
	__be16 port;
	__u8  family;
	__u8  pad;
};

struct tnd_lb_affinity_key {
	__u8  client[16];   /* client address, or the netns cookie (TND_LB_AFF_NETNS) */
	__u16 rev_nat_id;
	__u8  family;
	__u8  flags;        /* TND_LB_AFF_* */
};
#define TND_LB_AFF_NETNS  (1 << 0)  /* client holds a netns cookie (socket LB), not an address */

struct tnd_lb_affinity_value {
	__u32 backend_id;
	__u32 last_used_s;  /* bpf_ktime_get_coarse_ns() / 1e9 */
};

struct tnd_lb_sock_key {
	__u64 cookie;       /* bpf_get_socket_cookie */
	__u8  addr[16];     /* backend address */
	__be16 port;        /* backend port */
	__u8  family;
	__u8  pad[5];
};

struct tnd_lb_sock_value {
	__u8  addr[16];     /* the VIP */
	__be16 port;
	__u16 rev_nat_id;
	__u32 pad;
};

#define TND_LB_NAT_FWD  1  /* key: client -> frontend tuple; value: the backend            */
#define TND_LB_NAT_REV  2  /* key: backend -> client tuple; value: the frontend (rev. NAT) */

struct tnd_lb_nat_key {
	__u8  saddr[16];
	__u8  daddr[16];
	__be16 sport;
	__be16 dport;
	__u8  proto;
	__u8  family;       /* 4 or 6 */
	__u8  dir;          /* TND_LB_NAT_FWD / TND_LB_NAT_REV */
	__u8  pad;
};

struct tnd_lb_nat_value {
	__u8  addr[16];     /* FWD: the backend; REV: the frontend address the client used */
	__be16 port;        /* FWD: backend port; REV: frontend port */
	__u16 rev_nat_id;
	__u32 backend_id;
	__u32 ifindex;      /* REV: device the request arrived on (the reply leaves through it) */
	__u32 pad;
};

struct tnd_lb_snat_value {
	__u8  addr[16];     /* FWD: the backend; REV: the client */
	__u8  nat_addr[16]; /* FWD: the SNAT source (a node address); REV: the frontend address */
	__be16 port;        /* FWD: backend port; REV: client port */
	__be16 nat_port;    /* FWD: the SNAT source port; REV: frontend port */
	__u16 rev_nat_id;
	__u16 pad;
	__u32 backend_id;
	__u32 ifindex;      /* REV: device the request arrived on (the reply leaves through it) */
	__u32 last_used_s;  /* REV: bpf_ktime_get_coarse_ns() / 1e9 at its last reply or (re)use */
	__u32 pad2;
};

/* SNAT source ports: above the kernel's default ephemeral range (ip_local_port_range 32768-60999),
 * so the node's own connections from the same address never collide with them. */
#define TND_LB_SNAT_PORT_MIN  61000
#define TND_LB_SNAT_PORT_MAX  65535
#define TND_LB_SNAT_RETRIES   8      /* ports tried for a new connection before dropping it */
#define TND_LB_SNAT_STALE_S   300    /* a REV entry without replies for this long may be reused */

struct tnd_lb_cgroup {
	__u16 ep_id;
	__u16 pad0;
	__u32 pad1;
};

#define TND_LB_SERVICES_MAX   65536
#define TND_LB_BACKENDS_MAX   65536
#define TND_LB_AFFINITY_MAX   65536
#define TND_LB_SOCK_REVNAT_MAX 262144
#define TND_LB_NAT_MAX        262144
#define TND_LB_SNAT_MAX       262144
#define TND_LB_CGROUPS_MAX    4096
#define TND_MAGLEV_DEFAULT_M  16381

#endif /* TENDRIL_ABI_H */
