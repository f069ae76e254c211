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
 * Which allow entry decides when both lookups match (it only matters for the reported match type
 * and, later, the proxy port): the one with the more specific L4 part (port > protocol > any), and
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

/*
 * The policy step (see the top of this file). Sets p->remote_id when it looks the peer up (a
 * remote_id set before, the source identity an overlay packet carried, is used as it is).
 * Returns 0 (forward) or the drop reason.
 */
static __always_inline int tnd_policy_check(struct __sk_buff *skb, struct tnd_pkt *p, const struct tnd_hook *h,
					    __u32 settings_flags)
{
	const struct tnd_policy_value *id_v, *any_v, *v;
	const __u8 egress = h->ct_scope == TND_CT_EGRESS;
	struct tnd_policy_key k;
	__u16 ev_flags = tnd_hook_flags(h);
	__u8 match = TND_MATCH_NONE;
	int reason = 0;
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

	k.prefixlen = TND_POLICY_FULL_PREFIX;
	k.identity = p->remote_id;
	k.egress = egress;
	k.proto = p->tuple.proto;
	k.dport = 0;
	if (k.proto == IPPROTO_TCP || k.proto == IPPROTO_UDP || k.proto == IPPROTO_SCTP)
		k.dport = bpf_htons(p->tuple.dport);
	else if (k.proto == IPPROTO_ICMP || k.proto == IPPROTO_ICMPV6)
		k.dport = bpf_htons(p->icmp_type);   /* 0 for ICMP in the other IP version (opaque) */
	id_v = bpf_map_lookup_elem(pm, &k);
	any_v = NULL;
	if (!id_v || !(id_v->flags & TND_POLICY_DENY)) {   /* a deny by identity needs no second look */
		k.identity = 0;
		any_v = bpf_map_lookup_elem(pm, &k);
	}

	if (id_v && (id_v->flags & TND_POLICY_DENY)) {
		reason = TND_DROP_POLICY_DENY;
		match = id_v->match_type;
	} else if (any_v && (any_v->flags & TND_POLICY_DENY)) {
		reason = TND_DROP_POLICY_DENY;
		match = any_v->match_type;
	} else if (id_v || any_v) {
		v = id_v;
		if (!v || (any_v && tnd_match_l4_rank(any_v->match_type) > tnd_match_l4_rank(v->match_type)))
			v = any_v;
		if (v)
			match = v->match_type;
	} else {
		reason = TND_DROP_POLICY_DENIED;
	}

	if (reason) {
		ev_flags |= TND_EVF_POLICY_DENY;
		if (settings_flags & TND_SETTINGS_POLICY_AUDIT) {
			ev_flags |= TND_EVF_POLICY_AUDIT;
			reason = 0;
		}
	}
	if (p->ct_state == TND_CT_NEW)
		tnd_emit(skb, p, TND_EVENT_POLICY_VERDICT, match, ev_flags);
	return reason;
}

#endif /* TND_POLICY_H */
