/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Base include for every Tendril BPF program: kernel types (vmlinux.h,
 * generated from the running kernel's BTF), libbpf helpers, the ABI, and
 * the few wire constants that vmlinux.h cannot carry (they are #defines
 * in the kernel, and vmlinux.h only has types and enums).
 */
#ifndef TND_COMMON_H
#define TND_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "tendril_abi.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
/* conntrack.h ORs flag bytes into 32-bit words and relies on this layout. */
#error "Tendril's datapath assumes a little-endian target"
#endif

/* tc verdicts (uapi pkt_cls.h) */
#define TC_ACT_OK    0
#define TC_ACT_SHOT  2

/* Ethernet (uapi if_ether.h) */
#define TND_ETH_HLEN     14
#define TND_ETH_P_IP     0x0800
#define TND_ETH_P_ARP    0x0806
#define TND_ETH_P_IPV6   0x86DD

/* IPv4 fragment field (host order after bpf_ntohs) */
#define TND_IP_MF      0x2000
#define TND_IP_OFFSET  0x1FFF

/* IPv6 next-header values that are extension headers (net/ipv6.h) */
#define TND_NEXTHDR_HOP       0
#define TND_NEXTHDR_ROUTING  43
#define TND_NEXTHDR_FRAGMENT 44
#define TND_NEXTHDR_AUTH     51
#define TND_NEXTHDR_NONE     59
#define TND_NEXTHDR_DEST     60

/* IPPROTO_ICMPV6 is a uapi #define (in6.h), not part of vmlinux.h's enum */
#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

/* ICMP types this datapath interprets */
#define TND_ICMP_ECHOREPLY      0
#define TND_ICMP_DEST_UNREACH   3
#define TND_ICMP_SOURCE_QUENCH  4
#define TND_ICMP_ECHO           8
#define TND_ICMP_TIME_EXCEEDED 11
#define TND_ICMP_PARAMETERPROB 12
#define TND_ICMPV6_ERROR_MAX    4   /* ICMPv6 types 1..4 are errors (RFC 4443) */
#define TND_ICMPV6_ECHO_REQUEST 128
#define TND_ICMPV6_ECHO_REPLY   129
/* ICMPv6 that policy never blocks (as in Cilium): MLD query/report/done (130-132), router
 * solicitation/advertisement, neighbour solicitation/advertisement, redirect (133-137), MLDv2 report (143) */
#define TND_ICMPV6_MLD_QUERY    130
#define TND_ICMPV6_MLD_DONE     132
#define TND_ICMPV6_ND_FIRST     133
#define TND_ICMPV6_ND_LAST      137
#define TND_ICMPV6_MLD2_REPORT  143

#define TND_NSEC_PER_SEC 1000000000ULL

#ifndef likely
#define likely(x)   __builtin_expect(!!(x), 1)
#endif
#ifndef unlikely
#define unlikely(x) __builtin_expect(!!(x), 0)
#endif

static __always_inline void tnd_copy_addr16(__u8 *dst, const __u8 *src)
{
	/* 4-byte accesses: struct tnd_ct_key keeps addresses only 4-aligned,
	 * and the verifier insists on aligned stack accesses. */
	__u32 *d = (__u32 *)dst;
	const __u32 *s = (const __u32 *)src;

	d[0] = s[0]; d[1] = s[1]; d[2] = s[2]; d[3] = s[3];
}

static __always_inline int tnd_addr16_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;   /* 4-byte accesses, as above */

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/*
 * Per-packet state, filled step by step (endpoint, parse, conntrack) and
 * read by the last step (metrics, event). One struct on the stack keeps
 * the steps' signatures short and the event fill a straight copy.
 */
struct tnd_pkt {
	/* Outer tuple as seen on the wire. Ports host order; ICMP echo ids
	 * mapped into ports (see parse.h); ifindex = host veth. This is also
	 * the conntrack key for every packet except ICMP errors. */
	struct tnd_ct_key tuple;
	/* ICMP errors only: the tuple of the embedded (original) packet. */
	struct tnd_ct_key inner;
	__u32 len;          /* skb->len                          */
	__u16 eth_proto;    /* host order                        */
	__u16 ev_flags;     /* TND_EVF_*                         */
	__u16 ep_id;
	__u8  tcp_flags;
	__u8  icmp_type;
	__u8  icmp_code;
	__u8  ct_state;     /* TND_CT_*                          */
	__u8  no_l4;        /* non-first fragment: no L4 header  */
	__u8  first_reply;  /* this packet set CT SEEN_REPLY      */
	__u8  ct_reopen;    /* NEW: a SYN reopening a closing entry */
	__u8  pad;
	__be16 proxy_port;  /* L7 redirect wanted by the policy (proxy.h); 0 = none */
	__u32 remote_id;    /* peer identity; 0 = not looked up yet */
	__u32 tcp_seq;      /* TCP: sequence number, host order  */
	__u16 payload_off;  /* TCP: offset of the payload in skb */
	__u16 pad2;
};

/*
 * What distinguishes one attach point from another. Programs pass a
 * compile-time constant, so the inlined pipeline is specialised per
 * program (e.g. the source check vanishes from to-container).
 */
struct tnd_hook {
	__u8 obs_point;     /* TND_TRACE_*                        */
	__u8 metric_dir;    /* TND_METRIC_*                       */
	__u8 ct_scope;      /* TND_CT_EGRESS / TND_CT_INGRESS     */
	__u8 check_source;  /* verify the source IP is the pod's  */
};

#endif /* TND_COMMON_H */
