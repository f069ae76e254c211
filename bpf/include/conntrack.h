/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Conntrack, per endpoint: the key carries the host veth ifindex, so the
 * two ends of a pod-to-pod flow on one node have one entry each, each
 * seen from its own pod (like Cilium's per-endpoint CT).
 *
 *   forward tuple found   -> ESTABLISHED, counted tx
 *   reversed tuple found  -> REPLY (TND_EVF_IS_REPLY), counted rx
 *   neither               -> NEW: entry created with the program's scope,
 *                            once policy has admitted the packet (tnd_ct_create)
 *   ICMP error            -> the embedded packet's tuple, then its reverse
 *                            -> RELATED (never creates an entry; NEW if none).
 *                            Counted in the direction it travels (the
 *                            reply direction when the embedded tuple is
 *                            the entry's own, with TND_EVF_IS_REPLY) and
 *                            refreshes last_seen, not the lifetime: errors
 *                            must not keep a dead flow alive.
 *   IPv4/IPv6 fragment other than the first (no ports to build a tuple)
 *                         -> not tracked; reported as ESTABLISHED with
 *                            TND_EVF_FRAGMENT (the first fragment, which
 *                            carries the ports, did the conntrack work)
 *
 * Concurrency: the same entry is updated from both programs and from
 * several CPUs at once, so counters use atomic adds and flag words atomic
 * ORs (a lost SEEN_REPLY would mean a second "first reply" trace). Only the
 * timestamps are plain stores: any recent value is right.
 *
 * Timestamps use bpf_ktime_get_coarse_ns(): the same CLOCK_MONOTONIC base
 * as bpf_ktime_get_ns() (the agent's GC compares expires_ns with
 * CLOCK_MONOTONIC) at a tick's resolution, which is plenty for lifetimes
 * of seconds, and cheaper than reading the clock source per packet.
 *
 * Lifetimes (Cilium defaults): TCP with FIN or RST seen 10 s; TCP that has
 * seen a packet without SYN 6 h; TCP with only SYNs so far 60 s; other
 * protocols 60 s. A SYN (without ACK) in the original direction on an
 * entry that is closing reopens it: the entry is reset and reported NEW
 * (port reuse after a close within the 10 s close lifetime).
 */
#ifndef TND_CONNTRACK_H
#define TND_CONNTRACK_H

#include "common.h"
#include "maps.h"

#define TND_EEXIST 17

/* tnd_ct_update() ORs into the 32-bit words that hold these fields. */
_Static_assert(__builtin_offsetof(struct tnd_ct_value, scope) == 56 &&
	       __builtin_offsetof(struct tnd_ct_value, tx_flags_seen) == 57 &&
	       __builtin_offsetof(struct tnd_ct_value, rx_flags_seen) == 58 &&
	       __builtin_offsetof(struct tnd_ct_value, flags) == 60,
	       "struct tnd_ct_value layout changed: update tnd_ct_update()");

#define TND_CTF_CLOSING (TND_CTF_TX_CLOSING | TND_CTF_RX_CLOSING)

static __always_inline __u64 tnd_ct_lifetime_ns(__u8 proto, __u32 ctf)
{
	__u64 secs = TND_CT_LIFETIME_NONTCP;

	if (proto == IPPROTO_TCP) {
		if (ctf & TND_CTF_CLOSING)
			secs = TND_CT_LIFETIME_TCP_CLOSE;
		else if (ctf & TND_CTF_SEEN_NON_SYN)
			secs = TND_CT_LIFETIME_TCP;
		else
			secs = TND_CT_LIFETIME_TCP_SYN;
	}
	return secs * TND_NSEC_PER_SEC;
}

/* The TND_CTF_* flags a packet sets on its entry. RST closes both ways. */
static __always_inline __u32 tnd_ct_flags_of(const struct tnd_pkt *p, int reply)
{
	__u8 tf = p->tcp_flags;
	__u32 f = reply ? TND_CTF_SEEN_REPLY : 0;

	if (p->tuple.proto != IPPROTO_TCP)
		return f;
	if (!(tf & TND_TCP_SYN))
		f |= TND_CTF_SEEN_NON_SYN;
	if (tf & TND_TCP_RST)
		f |= TND_CTF_RST | TND_CTF_CLOSING;
	else if (tf & TND_TCP_FIN)
		f |= reply ? TND_CTF_RX_CLOSING : TND_CTF_TX_CLOSING;
	return f;
}

static __always_inline void tnd_ct_reverse(struct tnd_ct_key *r, const struct tnd_ct_key *k)
{
	r->ifindex = k->ifindex;
	tnd_copy_addr16(r->saddr, k->daddr);
	tnd_copy_addr16(r->daddr, k->saddr);
	r->sport = k->dport;
	r->dport = k->sport;
	r->proto = k->proto;
	r->ip_version = k->ip_version;
	r->pad0 = 0;
}

/* A fresh entry for p in the original direction. */
static __always_inline void tnd_ct_fill_new(struct tnd_ct_value *v, const struct tnd_pkt *p,
					    __u8 scope, __u64 now)
{
	__u32 f = tnd_ct_flags_of(p, 0);

	v->created_ns = now;
	v->last_seen_ns = now;
	v->expires_ns = now + tnd_ct_lifetime_ns(p->tuple.proto, f);
	v->tx_packets = 1;
	v->tx_bytes = p->len;
	v->rx_packets = 0;
	v->rx_bytes = 0;
	v->scope = scope;
	v->tx_flags_seen = p->tcp_flags;
	v->rx_flags_seen = 0;
	v->pad0 = 0;
	v->flags = f;
	v->ep_id = p->ep_id;
}

/* Counts p on v (reply or original direction). */
static __always_inline void tnd_ct_count(struct tnd_ct_value *v, const struct tnd_pkt *p, int reply, __u64 now)
{
	if (reply) {
		__sync_fetch_and_add(&v->rx_packets, 1);
		__sync_fetch_and_add(&v->rx_bytes, p->len);
	} else {
		__sync_fetch_and_add(&v->tx_packets, 1);
		__sync_fetch_and_add(&v->tx_bytes, p->len);
	}
	v->last_seen_ns = now;
}

/*
 * Counts p on v, records its TCP flags and CT flags, and extends the
 * lifetime. Returns the CT flags this packet set first (atomically, so
 * exactly one packet sees SEEN_REPLY newly set).
 */
static __always_inline __u32 tnd_ct_update(struct tnd_ct_value *v, const struct tnd_pkt *p, int reply, __u64 now)
{
	/* Little-endian 32-bit words around the byte/16-bit fields:
	 *   offset 56: scope | tx_flags_seen << 8 | rx_flags_seen << 16 | pad0 << 24
	 *   offset 60: flags | ep_id << 16                                          */
	__u32 *seen_word = (__u32 *)&v->scope;
	__u32 *flags_word = (__u32 *)&v->flags;
	__u8 tf = p->tcp_flags;
	__u8 seen = reply ? v->rx_flags_seen : v->tx_flags_seen;
	__u32 add = tnd_ct_flags_of(p, reply);
	__u32 old = *(volatile __u16 *)&v->flags;

	tnd_ct_count(v, p, reply, now);
	if ((seen & tf) != tf)
		__sync_fetch_and_or(seen_word, (__u32)tf << (reply ? 16 : 8));
	if ((old & add) != add)
		old = __sync_fetch_and_or(flags_word, add);
	v->expires_ns = now + tnd_ct_lifetime_ns(p->tuple.proto, old | add);
	return add & ~old;
}

static __always_inline int tnd_ct_reopens(const struct tnd_ct_value *v, const struct tnd_pkt *p)
{
	return p->tuple.proto == IPPROTO_TCP &&
	       (p->tcp_flags & (TND_TCP_SYN | TND_TCP_ACK)) == TND_TCP_SYN &&
	       (v->flags & TND_CTF_CLOSING);
}

/* ICMP errors: the embedded packet's tuple, forward then reverse. */
static __always_inline void tnd_ct_related(struct tnd_pkt *p, __u64 now)
{
	struct tnd_ct_value *v;
	struct tnd_ct_key rkey;

	p->ct_state = TND_CT_NEW;       /* no entry: reported NEW, none created */
	v = bpf_map_lookup_elem(&tnd_ct, &p->inner);
	if (v) {
		/* The error answers a packet sent in the entry's original
		 * direction, so it travels in the reply direction. */
		tnd_ct_count(v, p, 1, now);
		p->ct_state = TND_CT_RELATED;
		p->ev_flags |= TND_EVF_IS_REPLY;
		return;
	}
	tnd_ct_reverse(&rkey, &p->inner);
	v = bpf_map_lookup_elem(&tnd_ct, &rkey);
	if (v) {
		tnd_ct_count(v, p, 0, now);
		p->ct_state = TND_CT_RELATED;
	}
}

/*
 * Conntrack in two steps around the policy check, so that a connection policy denies leaves no
 * entry behind:
 *   tnd_ct_lookup(): sets p->ct_state, TND_EVF_IS_REPLY and p->first_reply, and counts the packet
 *                    on an existing entry (ESTABLISHED, REPLY, RELATED). NEW (no entry, or a SYN
 *                    reopening a closing entry: p->ct_reopen) changes nothing yet.
 *   tnd_ct_create(): for a NEW packet that is allowed, creates (or resets) its entry.
 * An ESTABLISHED packet that policy then drops has already been counted on its entry, as in Cilium,
 * whose CT lookup also runs before the policy check.
 */
static __always_inline void tnd_ct_lookup(struct tnd_pkt *p)
{
	__u64 now = bpf_ktime_get_coarse_ns();
	struct tnd_ct_value *v;
	struct tnd_ct_key rkey;

	if (p->no_l4) {
		p->ct_state = TND_CT_ESTABLISHED;
		return;
	}
	if (p->ev_flags & TND_EVF_ICMP_ERROR) {
		tnd_ct_related(p, now);
		return;
	}

	v = bpf_map_lookup_elem(&tnd_ct, &p->tuple);
	if (v) {
		if (unlikely(tnd_ct_reopens(v, p))) {
			p->ct_reopen = 1;
			p->ct_state = TND_CT_NEW;
			return;
		}
		tnd_ct_update(v, p, 0, now);
		p->ct_state = TND_CT_ESTABLISHED;
		return;
	}

	tnd_ct_reverse(&rkey, &p->tuple);
	v = bpf_map_lookup_elem(&tnd_ct, &rkey);
	if (v) {
		p->first_reply = !!(tnd_ct_update(v, p, 1, now) & TND_CTF_SEEN_REPLY);
		p->ct_state = TND_CT_REPLY;
		p->ev_flags |= TND_EVF_IS_REPLY;
		return;
	}
	p->ct_state = TND_CT_NEW;
}

/* Creates the entry of a NEW packet (not ICMP errors: they never create one). Returns 0 or a drop reason. */
static __always_inline int tnd_ct_create(struct tnd_pkt *p, __u8 scope)
{
	struct tnd_ct_value *v, nv;
	__u64 now;
	int err;

	if (p->ct_state != TND_CT_NEW || (p->ev_flags & TND_EVF_ICMP_ERROR))
		return 0;
	now = bpf_ktime_get_coarse_ns();
	tnd_ct_fill_new(&nv, p, scope, now);
	/* A reopening SYN replaces the closing entry; otherwise only a missing entry is created. */
	err = bpf_map_update_elem(&tnd_ct, &p->tuple, &nv, p->ct_reopen ? BPF_ANY : BPF_NOEXIST);
	if (err == -TND_EEXIST) {
		/* Another CPU created it between our lookup and insert. */
		v = bpf_map_lookup_elem(&tnd_ct, &p->tuple);
		if (v) {
			tnd_ct_update(v, p, 0, now);
			p->ct_state = TND_CT_ESTABLISHED;
			return 0;
		}
	}
	if (err)
		return TND_DROP_CT_MAP_INSERTION_FAILED;
	return 0;
}

#endif /* TND_CONNTRACK_H */
