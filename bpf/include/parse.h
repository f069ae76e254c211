/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet parsing: Ethernet, IPv4, IPv6 (+ extension headers), TCP, UDP,
 * SCTP, ICMP, ICMPv6, and the packet embedded in ICMP errors.
 *
 * Every header is copied to the stack by tnd_load(): straight from the
 * skb's linear area when it is there (a bounds check and a few word
 * loads), else with bpf_skb_load_bytes(), which also reads paged data
 * (GRO/GSO skbs, or AF_PACKET frames of a page or more, keep only part of
 * their headers linear). The skb is never modified (no bpf_skb_pull_data,
 * which may unclone or copy it). Why not the helper alone: a helper call
 * costs ~30 ns on our VMs and it took three or four per packet, which
 * doubled the program's cost.
 *
 * The parser runs as global (non-inlined) BPF functions: tnd_parse(),
 * tnd_ipv6_skip_exthdrs(), tnd_parse_icmp_inner(). The verifier checks a
 * global function once, on its own; inlined, every tnd_load()'s two
 * outcomes multiplied the paths it walked through all later steps (216k
 * instructions processed and 1.2 s to load, against 15k and 60 ms).
 *
 * Drop reasons, one rule per layer:
 *   Ethernet or IPv4/IPv6 base header cut short or invalid
 *     (IPv4 version != 4, ihl < 5, options past the end; IPv6 version != 6)
 *                                              -> TND_DROP_INVALID_PACKET (134)
 *   IPv6 extension header chain invalid: cut short, No-Next-Header (59),
 *     hop-by-hop not first, or longer than TND_IPV6_MAX_EXTHDRS
 *                                              -> TND_DROP_INVALID_IPV6_EXTHDR (156)
 *   Anything after the L3 headers cut short or invalid: the TCP (20 bytes,
 *     doff >= 5), UDP/SCTP (8 bytes) or ICMP/ICMPv6 (8 bytes) header, and
 *     the packet embedded in an ICMP error (its IP header, extension
 *     headers and first 8 bytes of L4)         -> TND_DROP_CT_TRUNCATED (135)
 *     (as in Cilium, where conntrack fails with "CT: Truncated or invalid
 *     header" when it cannot read the ports).
 *   Ethertype other than IPv4/IPv6/ARP       -> TND_DROP_UNSUPPORTED_L3 (139)
 * IPv4 total length is not checked against skb->len: GSO and BIG TCP skbs
 * legitimately disagree with it.
 *
 * Ports: host byte order. ICMP echo ids become ports so that requests and
 * replies pair up in conntrack: request -> sport = id, dport = 0; reply ->
 * sport = 0, dport = id (the reverse of a reply's tuple is its request's).
 * Other L4 protocols have ports 0 and are tracked per address pair.
 */
#ifndef TND_PARSE_H
#define TND_PARSE_H

#include "common.h"

/* Longest extension-header chain walked (bounded loop). Real traffic has
 * 0-2 (HBH on MLD, fragment header); Cilium stops at 4. */
#define TND_IPV6_MAX_EXTHDRS 8

/* Offsets past this are read with the helper only (keeps the verifier's
 * packet-offset arithmetic bounded; real headers end far earlier). */
#define TND_DIRECT_MAX_OFF 1024

/*
 * skb->data / skb->data_end through inline asm: a plain C read lets clang
 * merge the ctx loads of different call sites into one load from a
 * computed ctx address, which the verifier rejects ("dereference of
 * modified ctx ptr"); it happened on a variant of this file.
 */
static __always_inline void *tnd_skb_data(struct __sk_buff *skb)
{
	void *p;

	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(p)
		     : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data)));
	return p;
}

static __always_inline void *tnd_skb_data_end(struct __sk_buff *skb)
{
	void *p;

	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(p)
		     : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data_end)));
	return p;
}

/*
 * Copies len (a constant) bytes at off into to: directly when they are all
 * in the linear area, else with bpf_skb_load_bytes() (paged data), which
 * fails only when the packet is shorter than off + len. Returns 0 or < 0.
 */
static __always_inline int tnd_load(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	void *data = tnd_skb_data(skb);
	void *data_end = tnd_skb_data_end(skb);

	if (likely(off <= TND_DIRECT_MAX_OFF)) {
		void *from = data + off;

		if (likely(from + len <= data_end)) {
			/* The cast lets clang copy in 4-byte words; unaligned packet
			 * loads are fine on x86 and arm64 (not strict-alignment). */
			__builtin_memcpy(to, (const __u32 *)from, len);
			return 0;
		}
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

/* The first 8 bytes of any IPv6 extension header: enough for next header
 * and length of HBH/routing/dest-opts/AH and all of a fragment header. */
struct tnd_ipv6_ext {
	__u8  nexthdr;
	__u8  hdrlen;
	__be16 frag_off;    /* fragment header only: offset << 3 | M */
	__u32 rest;
};

/* ICMP and ICMPv6 share this 8-byte layout. */
struct tnd_icmp {
	__u8  type;
	__u8  code;
	__u16 csum;
	__be16 id;
	__be16 seq;
};

static __always_inline void tnd_icmp_echo_ports(struct tnd_ct_key *t, __u8 type, __be16 id)
{
	int v6 = t->ip_version == 6;

	if (type == (v6 ? TND_ICMPV6_ECHO_REQUEST : TND_ICMP_ECHO))
		t->sport = bpf_ntohs(id);
	else if (type == (v6 ? TND_ICMPV6_ECHO_REPLY : TND_ICMP_ECHOREPLY))
		t->dport = bpf_ntohs(id);
}

static __always_inline int tnd_is_icmp_error(__u8 ip_version, __u8 type)
{
	if (ip_version == 6)
		return type >= 1 && type <= TND_ICMPV6_ERROR_MAX;
	return type == TND_ICMP_DEST_UNREACH || type == TND_ICMP_SOURCE_QUENCH ||
	       type == TND_ICMP_TIME_EXCEEDED || type == TND_ICMP_PARAMETERPROB;
}

/* In/out of tnd_ipv6_skip_exthdrs(). */
struct tnd_ipv6_walk {
	__u32 off;      /* in: just past the fixed header; out: the L4 offset   */
	__u8  nexthdr;  /* in: the fixed header's next header; out: L4 protocol */
	__u8  frag;     /* out: a fragment header was seen                      */
	__u8  no_l4;    /* out: non-first fragment: what follows is not a header */
	__u8  pad;
};

/*
 * Walks the IPv6 extension headers (bounded loop). A non-first fragment
 * stops the walk; ESP (50) ends it like an L4 protocol, as nothing after
 * it is readable. Returns 0 or TND_DROP_INVALID_IPV6_EXTHDR.
 * Global (verified once, separately), like tnd_parse(): every iteration's
 * load has two outcomes, which inlined would multiply the caller's paths.
 */
__noinline int tnd_ipv6_skip_exthdrs(struct __sk_buff *skb, struct tnd_ipv6_walk *w)
{
	struct tnd_ipv6_ext ext;
	__u32 o;
	__u8 nh;
	int i;

	if (!w)
		return TND_DROP_INVALID_IPV6_EXTHDR;
	o = w->off;
	nh = w->nexthdr;
	for (i = 0; i < TND_IPV6_MAX_EXTHDRS; i++) {
		switch (nh) {
		case TND_NEXTHDR_HOP:
			if (i != 0)     /* RFC 8200 4.1: only right after the IPv6 header */
				return TND_DROP_INVALID_IPV6_EXTHDR;
			/* fallthrough */
		case TND_NEXTHDR_ROUTING:
		case TND_NEXTHDR_DEST:
		case TND_NEXTHDR_AUTH:
		case TND_NEXTHDR_FRAGMENT:
			if (tnd_load(skb, o, &ext, sizeof(ext)) < 0)
				return TND_DROP_INVALID_IPV6_EXTHDR;
			if (nh == TND_NEXTHDR_FRAGMENT) {
				w->frag = 1;
				if (bpf_ntohs(ext.frag_off) & ~7) {   /* offset != 0 */
					w->no_l4 = 1;
					w->nexthdr = ext.nexthdr;
					w->off = o + 8;
					return 0;
				}
				o += 8;
			} else if (nh == TND_NEXTHDR_AUTH) {
				o += ((__u32)ext.hdrlen + 2) * 4;   /* RFC 4302: 4-byte units */
			} else {
				o += ((__u32)ext.hdrlen + 1) * 8;   /* RFC 8200: 8-byte units */
			}
			nh = ext.nexthdr;
			break;
		case TND_NEXTHDR_NONE:
			/* No L4 at all: nothing to track or police (Cilium drops it too). */
			return TND_DROP_INVALID_IPV6_EXTHDR;
		default:
			w->nexthdr = nh;
			w->off = o;
			return 0;
		}
	}
	return TND_DROP_INVALID_IPV6_EXTHDR;
}

/*
 * The packet embedded in an ICMP error, at off: its IP header (same
 * version as the outer one) and first 8 bytes of L4, into p->inner.
 * Returns 0 or TND_DROP_CT_TRUNCATED.
 */
__noinline int tnd_parse_icmp_inner(struct __sk_buff *skb, __u32 off, struct tnd_pkt *p)
{
	struct tnd_ct_key *t;
	union {
		__u8 ports[8];          /* TCP/UDP/SCTP: sport, dport first */
		struct tnd_icmp icmp;
	} l4;
	struct tnd_ipv6_walk w = {};
	__u8 proto, no_l4 = 0;

	if (!p)
		return TND_DROP_CT_TRUNCATED;
	t = &p->inner;
	if (p->tuple.ip_version == 4) {
		struct iphdr ip;
		__u8 vihl;

		if (tnd_load(skb, off, &ip, sizeof(ip)) < 0)
			return TND_DROP_CT_TRUNCATED;
		vihl = *(__u8 *)&ip;
		if ((vihl >> 4) != 4 || (vihl & 0xf) < 5)
			return TND_DROP_CT_TRUNCATED;
		t->ip_version = 4;
		*(__u32 *)t->saddr = ip.saddr;
		*(__u32 *)t->daddr = ip.daddr;
		proto = ip.protocol;
		if (bpf_ntohs(ip.frag_off) & TND_IP_OFFSET)
			no_l4 = 1;
		off += (vihl & 0xf) * 4;
	} else {
		struct ipv6hdr ip6;

		if (tnd_load(skb, off, &ip6, sizeof(ip6)) < 0)
			return TND_DROP_CT_TRUNCATED;
		if ((*(__u8 *)&ip6 >> 4) != 6)
			return TND_DROP_CT_TRUNCATED;
		t->ip_version = 6;
		tnd_copy_addr16(t->saddr, (const __u8 *)&ip6.saddr);
		tnd_copy_addr16(t->daddr, (const __u8 *)&ip6.daddr);
		w.off = off + sizeof(ip6);
		w.nexthdr = ip6.nexthdr;
		if (tnd_ipv6_skip_exthdrs(skb, &w))
			return TND_DROP_CT_TRUNCATED;
		off = w.off;
		proto = w.nexthdr;
		no_l4 = w.no_l4;
	}
	t->proto = proto;
	if (no_l4)
		return 0;

	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (tnd_load(skb, off, &l4, sizeof(l4)) < 0)
			return TND_DROP_CT_TRUNCATED;
		t->sport = bpf_ntohs(*(__be16 *)&l4.ports[0]);
		t->dport = bpf_ntohs(*(__be16 *)&l4.ports[2]);
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if ((proto == IPPROTO_ICMPV6) != (t->ip_version == 6))
			break;
		if (tnd_load(skb, off, &l4, sizeof(l4)) < 0)
			return TND_DROP_CT_TRUNCATED;
		tnd_icmp_echo_ports(t, l4.icmp.type, l4.icmp.id);
		break;
	}
	return 0;
}

/* L4 header at off, protocol p->tuple.proto. Returns 0 or TND_DROP_CT_TRUNCATED. */
static __always_inline int tnd_parse_l4(struct __sk_buff *skb, __u32 off, struct tnd_pkt *p)
{
	struct tnd_ct_key *t = &p->tuple;

	switch (t->proto) {
	case IPPROTO_TCP: {
		struct tcphdr th;

		if (tnd_load(skb, off, &th, sizeof(th)) < 0)
			return TND_DROP_CT_TRUNCATED;
		if ((((__u8 *)&th)[12] >> 4) < 5)   /* data offset */
			return TND_DROP_CT_TRUNCATED;
		t->sport = bpf_ntohs(th.source);
		t->dport = bpf_ntohs(th.dest);
		p->tcp_flags = ((__u8 *)&th)[13];
		p->tcp_seq = bpf_ntohl(th.seq);
		p->payload_off = off + (((__u8 *)&th)[12] >> 4) * 4;
		return 0;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 hdr[4];  /* UDP header / SCTP common header start */

		if (tnd_load(skb, off, hdr, sizeof(hdr)) < 0)
			return TND_DROP_CT_TRUNCATED;
		t->sport = bpf_ntohs(hdr[0]);
		t->dport = bpf_ntohs(hdr[1]);
		return 0;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		struct tnd_icmp icmp;

		/* ICMP inside IPv6 or ICMPv6 inside IPv4: opaque protocol. */
		if ((t->proto == IPPROTO_ICMPV6) != (t->ip_version == 6))
			return 0;
		if (tnd_load(skb, off, &icmp, sizeof(icmp)) < 0)
			return TND_DROP_CT_TRUNCATED;
		p->icmp_type = icmp.type;
		p->icmp_code = icmp.code;
		if (tnd_is_icmp_error(t->ip_version, icmp.type)) {
			p->ev_flags |= TND_EVF_ICMP_ERROR;
			return tnd_parse_icmp_inner(skb, off + sizeof(icmp), p);
		}
		tnd_icmp_echo_ports(t, icmp.type, icmp.id);
		return 0;
	}
	}
	return 0;
}

static __always_inline int tnd_parse_ipv4(struct __sk_buff *skb, __u32 off, struct tnd_pkt *p)
{
	struct tnd_ct_key *t = &p->tuple;
	struct iphdr ip;
	__u16 frag;
	__u8 vihl;

	if (tnd_load(skb, off, &ip, sizeof(ip)) < 0)
		return TND_DROP_INVALID_PACKET;
	vihl = *(__u8 *)&ip;
	if ((vihl >> 4) != 4 || (vihl & 0xf) < 5)
		return TND_DROP_INVALID_PACKET;
	t->ip_version = 4;
	t->proto = ip.protocol;
	*(__u32 *)t->saddr = ip.saddr;
	*(__u32 *)t->daddr = ip.daddr;
	off += (vihl & 0xf) * 4;
	if (off > skb->len)                 /* options cut short */
		return TND_DROP_INVALID_PACKET;

	frag = bpf_ntohs(ip.frag_off);
	if (frag & (TND_IP_MF | TND_IP_OFFSET)) {
		p->ev_flags |= TND_EVF_FRAGMENT;
		if (frag & TND_IP_OFFSET) {     /* not the first: no L4 header */
			p->no_l4 = 1;
			return 0;
		}
	}
	return tnd_parse_l4(skb, off, p);
}

static __always_inline int tnd_parse_ipv6(struct __sk_buff *skb, __u32 off, struct tnd_pkt *p)
{
	struct tnd_ct_key *t = &p->tuple;
	struct tnd_ipv6_walk w = {};
	struct ipv6hdr ip6;
	int ret;

	if (tnd_load(skb, off, &ip6, sizeof(ip6)) < 0)
		return TND_DROP_INVALID_PACKET;
	if ((*(__u8 *)&ip6 >> 4) != 6)
		return TND_DROP_INVALID_PACKET;
	t->ip_version = 6;
	p->ev_flags |= TND_EVF_IPV6;
	tnd_copy_addr16(t->saddr, (const __u8 *)&ip6.saddr);
	tnd_copy_addr16(t->daddr, (const __u8 *)&ip6.daddr);

	w.off = off + sizeof(ip6);
	w.nexthdr = ip6.nexthdr;
	ret = tnd_ipv6_skip_exthdrs(skb, &w);
	if (ret)
		return ret;
	t->proto = w.nexthdr;
	if (w.frag)
		p->ev_flags |= TND_EVF_FRAGMENT;
	if (w.no_l4) {
		p->no_l4 = 1;
		return 0;
	}
	return tnd_parse_l4(skb, w.off, p);
}

/*
 * Parses the packet into p (which the caller zeroed). Returns 0 (p->eth_proto
 * tells IPv4/IPv6/ARP apart) or a drop reason. Global: verified once, on
 * its own (see the top of this file); the call costs a couple of ns.
 */
__noinline int tnd_parse(struct __sk_buff *skb, struct tnd_pkt *p)
{
	__be16 proto;

	if (!p)     /* global functions must not trust pointer arguments */
		return TND_DROP_INVALID_PACKET;

	if (tnd_load(skb, 12, &proto, sizeof(proto)) < 0)
		return TND_DROP_INVALID_PACKET;
	p->eth_proto = bpf_ntohs(proto);

	switch (p->eth_proto) {
	case TND_ETH_P_IP:
		return tnd_parse_ipv4(skb, TND_ETH_HLEN, p);
	case TND_ETH_P_IPV6:
		return tnd_parse_ipv6(skb, TND_ETH_HLEN, p);
	case TND_ETH_P_ARP:
		return 0;
	}
	return TND_DROP_UNSUPPORTED_L3;
}

#endif /* TND_PARSE_H */
