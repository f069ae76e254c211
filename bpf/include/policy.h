/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Identity-based L3/L4 policy, like Cilium's bpf_lxc: each program enforces its own direction
 * (tnd_from_container egress, tnd_to_container ingress) with the endpoint's policy map,
 * tnd_policy[ep_id] (an LPM trie, see tendril_abi.h).
 *
 *   no inner map, or no enforcement marker for the direction  -> not policed (as before policy)
 *   CT REPLY / RELATED, non-first fragments                   -> pass: replies and ICMP errors of
 *        a connection policy admitted ride on its CT entry; a non-first fragment has no ports,
 *        and the first fragment, which has them, was checked
 *   ICMPv6 neighbour discovery and MLD (types 130-137, 143)   -> pass (the network needs them)
 *   (ingress from the host is an ordinary map entry: the agent writes Cilium's allow-localhost
 *    rule, which an ingressDeny fromEntities [host] can override)
 *   otherwise (NEW and ESTABLISHED original-direction packets: an established connection is
 *   re-checked on every packet, so removing a rule stops it):
 *        two lookups with {identity, direction, protocol, destination port}: the peer's identity
 *        (ipcache), then identity 0 (any peer). ICMP/ICMPv6 look up their type as the port (as
 *        Cilium's ICMP rules do: a protocol-only entry covers every type, a full-length one a
 *        single type); other port-less protocols look up port 0. A DENY entry from either lookup
 *        denies (TND_DROP_POLICY_DENY, 181), else an entry from either allows, else the default
 *        deny (TND_DROP_POLICY_DENIED, 133).
 *
 * A NEW connection in an enforced direction emits one policy verdict event whatever the trace
 * level (Cilium's PolicyVerdictNotification): subtype = match type of the deciding entry
 * (TND_MATCH_NONE for the default deny), TND_EVF_POLICY_DENY when denied. In audit mode
 * (TND_SETTINGS_POLICY_AUDIT) a denied packet is forwarded instead, its verdict event has
 * TND_EVF_POLICY_DENY | TND_EVF_POLICY_AUDIT, and its connection gets a CT entry like any allowed one.
 *
 * Which allow entry decides when both lookups match (it matters for the reported match type
 * and the proxy port): the one with the more specific L4 part (port > protocol > any), and
 * on a tie the peer-identity one, approximating Cilium's "longest port prefix, then identity".
 */
#ifndef TND_POLICY_H
#define TND_POLICY_H

#include "common.h"
#include "maps.h"
#include "ipcache.h"
#include "events.h"

/* Bits of the key after prefixlen: identity 32 + egress 8 + proto 8 + dport 16. */
#define TND_POLICY_FULL_PREFIX 64

_Static_assert(sizeof(struct tnd_policy_key) == 12 && sizeof(struct tnd_policy_value) == 8,
	       "struct tnd_policy_key/value size changed: update maps.h and TND_POLICY_FULL_PREFIX");

/* The endpoint's policy map, or NULL when it has none. */
static __always_inline void *tnd_policy_map(__u16 ep_id)
{
	__u32 k = ep_id;

	return bpf_map_lookup_elem(&tnd_policy, &k);
}

static __always_inline int tnd_policy_enforced(void *pm, __u8 egress)
{
	struct tnd_policy_key k = {
		.prefixlen = TND_POLICY_FULL_PREFIX,
		.identity = TND_ID_ENFORCED_MARKER,
		.egress = egress,
	};

	return bpf_map_lookup_elem(pm, &k) != NULL;
}

static __always_inline int tnd_policy_exempt_icmpv6(const struct tnd_pkt *p)
{
	__u8 t = p->icmp_type;

	if (p->tuple.proto != IPPROTO_ICMPV6 || p->tuple.ip_version != 6)
		return 0;
	return (t >= TND_ICMPV6_MLD_QUERY && t <= TND_ICMPV6_ND_LAST) || t == TND_ICMPV6_MLD2_REPORT;
}

/* 0 any, 1 protocol, 2 port: how specific an entry's L4 part is. */
static __always_inline int tnd_match_l4_rank(__u8 match_type)
{
	switch (match_type) {
	case TND_MATCH_L3_L4:
	case TND_MATCH_L4_ONLY:
		return 2;
	case TND_MATCH_L3_PROTO:
	case TND_MATCH_PROTO_ONLY:
		return 1;
	}
	return 0;
}

/* What one endpoint's map decides for a peer and an L4 key: the reason (0 allow), the match type
 * of the deciding entry and, for an allow, its proxy port (network order, 0 = no L7 redirect). */
struct tnd_policy_decision {
	int reason;
	__u8 match;
	__be16 proxy_port;
};

/* The two lookups and deny-over-allow (see the top of this file) in map pm. */
static __always_inline void tnd_policy_decide(void *pm, __u32 identity, __u8 egress, __u8 proto, __be16 dport,
					      struct tnd_policy_decision *d)
{
	const struct tnd_policy_value *id_v, *any_v, *v;
	struct tnd_policy_key k;

	d->reason = 0;
	d->match = TND_MATCH_NONE;
	d->proxy_port = 0;
	k.prefixlen = TND_POLICY_FULL_PREFIX;
	k.identity = identity;
	k.egress = egress;
	k.proto = proto;
	k.dport = dport;
	id_v = bpf_map_lookup_elem(pm, &k);
	any_v = NULL;
	if (!id_v || !(id_v->flags & TND_POLICY_DENY)) {   /* a deny by identity needs no second look */
		k.identity = 0;
		any_v = bpf_map_lookup_elem(pm, &k);
	}

	if (id_v && (id_v->flags & TND_POLICY_DENY)) {
		d->reason = TND_DROP_POLICY_DENY;
		d->match = id_v->match_type;
	} else if (any_v && (any_v->flags & TND_POLICY_DENY)) {
		d->reason = TND_DROP_POLICY_DENY;
		d->match = any_v->match_type;
	} else if (id_v || any_v) {
		v = id_v;
		if (!v || (any_v && tnd_match_l4_rank(any_v->match_type) > tnd_match_l4_rank(v->match_type)))
			v = any_v;
		if (v) {
			d->match = v->match_type;
			d->proxy_port = v->proxy_port;
		}
	} else {
		d->reason = TND_DROP_POLICY_DENIED;
	}
}

/* The L4 key a packet is looked up with: its destination port (network order), the ICMP type for
 * ICMP/ICMPv6, 0 for other protocols. */
static __always_inline __be16 tnd_policy_dport(const struct tnd_pkt *p)
{
	__u8 proto = p->tuple.proto;

	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP)
		return bpf_htons(p->tuple.dport);
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6)
		return bpf_htons(p->icmp_type);   /* 0 for ICMP in the other IP version (opaque) */
	return 0;
}

/*
 * The policy step (see the top of this file). Sets p->remote_id when it looks the peer up (a
 * remote_id set before, the source identity an overlay packet carried, is used as it is), and
 * p->proxy_port when the allowing entry redirects TCP (or egress UDP: DNS) to an L7 proxy.
 * Returns 0 (forward) or the drop reason.
 */
static __always_inline int tnd_policy_check(struct __sk_buff *skb, struct tnd_pkt *p, const struct tnd_hook *h,
					    __u32 settings_flags)
{
	const __u8 egress = h->ct_scope == TND_CT_EGRESS;
	struct tnd_policy_decision d;
	__u16 ev_flags = tnd_hook_flags(h);
	int reason;
	void *pm;

	if (p->ct_state == TND_CT_REPLY || p->ct_state == TND_CT_RELATED || p->no_l4)
		return 0;
	pm = tnd_policy_map(p->ep_id);
	if (likely(!pm) || !tnd_policy_enforced(pm, egress))
		return 0;
	if (tnd_policy_exempt_icmpv6(p))
		return 0;
	if (!p->remote_id)      /* already known when the packet came through the overlay (overlay.h) */
		p->remote_id = tnd_peer_identity(p, !egress);

	tnd_policy_decide(pm, p->remote_id, egress, p->tuple.proto, tnd_policy_dport(p), &d);
	reason = d.reason;
	if (reason) {
		ev_flags |= TND_EVF_POLICY_DENY;
		if (settings_flags & TND_SETTINGS_POLICY_AUDIT) {
			ev_flags |= TND_EVF_POLICY_AUDIT;
			reason = 0;
		}
	} else if (p->tuple.proto == IPPROTO_UDP && egress) {
		p->proxy_port = d.proxy_port; /* DNS rules: each datagram to the DNS proxy (proxy.h) */
	} else if (p->tuple.proto == IPPROTO_TCP) {
		p->proxy_port = d.proxy_port;
		/* Ingress that an L7 rule covers but that did not come through the proxy (proxy.h says
		 * how it could get here): drop, never bypass the rule. */
		if (d.proxy_port && !egress &&
		    (skb->mark & TND_MARK_MAGIC_MASK) != TND_MARK_MAGIC_FROM_PROXY) {
			reason = TND_DROP_POLICY_DENIED;
			ev_flags |= TND_EVF_POLICY_DENY;
		}
	}
	if (p->ct_state == TND_CT_NEW)
		tnd_emit(skb, p, TND_EVENT_POLICY_VERDICT, d.match, ev_flags);
	return reason;
}

#endif /* TND_POLICY_H */
