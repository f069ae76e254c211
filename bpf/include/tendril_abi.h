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
#define TND_DROP_UNKNOWN_L4              142
#define TND_DROP_CT_MAP_INSERTION_FAILED 155
#define TND_DROP_INVALID_IPV6_EXTHDR     156

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
	__u32 pad0;
	__u8  saddr[16];
	__u8  daddr[16];
};

/* Endpoint table, keyed by the host-side veth ifindex. */
struct tnd_endpoint_info {
	__u16 ep_id;
	__u16 flags;        /* reserved */
	__u32 pad0;
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
	__u32 trace_level;  /* TND_TRACE_LEVEL_* */
	__u32 flags;        /* bit 0: source IP verification enabled (default on) */
};
#define TND_SETTINGS_SOURCE_IP_CHECK (1 << 0)

#endif /* TENDRIL_ABI_H */
