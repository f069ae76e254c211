/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service load balancing shared by the socket LB (sock.c: cgroup connect/sendmsg/recvmsg/getpeername),
 * the packet LB for NodePort (sock.c: tnd_from_netdev) and the NodePort reverse NAT of replies
 * (lxc.c: tnd_from_container). Maps and structs: tendril_abi.h ("Service load balancing").
 *
 * Backend selection (tnd_lb_select), for a service master entry with count > 0:
 *   1. TND_SVC_AFFINITY: the client's tnd_lb_affinity entry, if younger than affinity_timeout_s
 *      (seconds since its last use) and its backend still exists and is ACTIVE (not checked
 *      against the slots, as in Cilium);
 *   2. TND_SVC_MAGLEV: tnd_lb_maglev[rev_nat_id][hash % M], M = the inner array's size;
 *   3. otherwise (or when 2. finds no usable backend): slot hash % count + 1, or if that slot's
 *      backend is missing or not ACTIVE (the agent rewrites the slots, so only briefly) one of the
 *      next slots, TND_LB_SLOT_PROBES in all.
 *   A picked backend must exist in tnd_lb_backends with the service's family and state ACTIVE,
 *   else the service has no usable backend (TND_DROP_NO_SERVICE_BACKEND). With affinity the choice
 *   is recorded (or refreshed) for the client.
 * hash: socket LB: a hash of the socket cookie (no packet yet; one socket keeps one backend, so an
 * unconnected UDP socket sends every datagram to the same backend while the service is unchanged);
 * packet LB: Maglev: tnd_lb_tuple_hash() of the connection's tuple; random: bpf_get_prandom_u32().
 *
 * The hash is murmur3_32 (seed 0) over little-endian 32-bit words: the 40 bytes of the connection's
 * TND_LB_NAT_FWD key for packets, the socket cookie's two halves (low first) for sockets. The agent
 * never needs it; tests recompute it.
 *
 * Packet rewrites (tnd_lb_rewrite): address and port of one side, with the IPv4 header checksum
 * (bpf_l3_csum_replace) and the TCP/UDP checksum incl. pseudo-header (bpf_l4_csum_replace with
 * BPF_F_PSEUDO_HDR; IPv6 addresses through bpf_csum_diff). UDP uses BPF_F_MARK_MANGLED_0: an IPv4
 * datagram without checksum (0) keeps none, a computed 0 is sent as 0xffff.
 * Not load balanced (passed untouched): IP fragments (no ports in the later ones), protocols other
 * than TCP and UDP.
 */
#ifndef TND_LB_H
#define TND_LB_H

#include "common.h"
#include "maps.h"
#include "parse.h"

#define TND_IPV4_CSUM_OFF   (TND_ETH_HLEN + 10)
#define TND_IPV4_SADDR_OFF  (TND_ETH_HLEN + 12)
#define TND_IPV4_DADDR_OFF  (TND_ETH_HLEN + 16)
#define TND_IPV6_SADDR_OFF  (TND_ETH_HLEN + 8)
#define TND_IPV6_DADDR_OFF  (TND_ETH_HLEN + 24)
#define TND_TCP_CSUM_OFF    16
#define TND_UDP_CSUM_OFF    6
#define TND_LB_SLOT_PROBES  4

_Static_assert(sizeof(struct tnd_lb_key) == 24 && sizeof(struct tnd_lb_value) == 16 &&
	       sizeof(struct tnd_lb_nat_key) == 40 && sizeof(struct tnd_lb_nat_value) == 32 &&
	       sizeof(struct tnd_lb_snat_value) == 56 &&
	       sizeof(struct tnd_lb_sock_key) == 32 && sizeof(struct tnd_lb_sock_value) == 24,
	       "LB struct sizes changed: update lb.h (hash length) and abi.py");

/* ---- hashing (murmur3_32, seed 0) ---- */

static __always_inline __u32 tnd_rotl32(__u32 x, const int r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 tnd_murmur_word(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = tnd_rotl32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = tnd_rotl32(h, 13);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 tnd_murmur_final(__u32 h, __u32 nbytes)
{
	h ^= nbytes;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Maglev hash of a packet connection: its TND_LB_NAT_FWD key. */
static __always_inline __u32 tnd_lb_tuple_hash(const struct tnd_lb_nat_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = 0;
	int i;

#pragma unroll
	for (i = 0; i < (int)(sizeof(*k) / 4); i++)
		h = tnd_murmur_word(h, w[i]);
	return tnd_murmur_final(h, sizeof(*k));
}

static __always_inline __u32 tnd_lb_cookie_hash(__u64 cookie)
{
	__u32 h = tnd_murmur_word(0, (__u32)cookie);

	h = tnd_murmur_word(h, (__u32)(cookie >> 32));
	return tnd_murmur_final(h, 8);
}

/* ---- backend selection ---- */

/* The backend with this ID if it can take traffic: right family, and ACTIVE unless terminating_ok
 * (an existing connection may finish on a TERMINATING backend). */
static __always_inline const struct tnd_lb_backend *tnd_lb_backend_get(__u32 id, __u8 family, const int terminating_ok)
{
	const struct tnd_lb_backend *be;

	if (!id)
		return NULL;
	be = bpf_map_lookup_elem(&tnd_lb_backends, &id);
	if (!be || be->family != family)
		return NULL;
	if (!terminating_ok && be->state != TND_BACKEND_ACTIVE)
		return NULL;
	return be;
}

/* tnd_lb_maglev[rev_nat_id][hash % M], or 0. M is the inner array's own size: inner maps carry
 * BPF_F_INNER_MAP, so the verifier lets the program read it from the map. */
static __always_inline __u32 tnd_lb_maglev_pick(__u16 rev_nat_id, __u32 hash)
{
	struct bpf_map *table = bpf_map_lookup_elem(&tnd_lb_maglev, &rev_nat_id);
	__u32 m, idx, *id;

	if (!table)
		return 0;
	m = table->max_entries;
	if (!m)
		return 0;
	idx = hash % m;
	id = bpf_map_lookup_elem(table, &idx);
	return id ? *id : 0;
}

/*
 * A backend for a new connection to the service whose slot-0 key is key and master entry svc (see
 * the top of this file). aff: the affinity key with client, family and flags filled in (rev_nat_id
 * is set here). Returns the backend (its ID in *id_out), or NULL when none is usable.
 */
static __always_inline const struct tnd_lb_backend *tnd_lb_select(const struct tnd_lb_key *key,
								 const struct tnd_lb_value *svc, __u32 hash,
								 struct tnd_lb_affinity_key *aff, __u32 *id_out)
{
	const struct tnd_lb_backend *be = NULL;
	struct tnd_lb_affinity_value *av, nav;
	const struct tnd_lb_value *slot;
	struct tnd_lb_key skey;
	__u32 flags = svc->flags;
	__u32 count = svc->count;
	__u32 now_s = 0, id = 0;
	int i;

	if (!count)
		return NULL;
	if (flags & TND_SVC_AFFINITY) {
		now_s = bpf_ktime_get_coarse_ns() / TND_NSEC_PER_SEC;
		aff->rev_nat_id = svc->rev_nat_id;
		av = bpf_map_lookup_elem(&tnd_lb_affinity, aff);
		if (av && now_s - av->last_used_s <= svc->affinity_timeout_s) {
			id = av->backend_id;
			be = tnd_lb_backend_get(id, key->family, 0);
			if (be) {
				av->last_used_s = now_s;
				*id_out = id;
				return be;
			}
		}
	}
	if (flags & TND_SVC_MAGLEV) {
		id = tnd_lb_maglev_pick(svc->rev_nat_id, hash);
		be = tnd_lb_backend_get(id, key->family, 0);
	}
	if (!be) {
		skey = *key;
#pragma unroll
		for (i = 0; i < TND_LB_SLOT_PROBES; i++) {
			skey.slot = (hash + i) % count + 1;
			slot = bpf_map_lookup_elem(&tnd_lb_services, &skey);
			if (!slot)
				continue;
			id = slot->backend_id;
			be = tnd_lb_backend_get(id, key->family, 0);
			if (be)
				break;
		}
		if (!be)
			return NULL;
	}
	if (flags & TND_SVC_AFFINITY) {
		nav.backend_id = id;
		nav.last_used_s = now_s;
		bpf_map_update_elem(&tnd_lb_affinity, aff, &nav, BPF_ANY);
	}
	*id_out = id;
	return be;
}

/* ---- packets ---- */

/* A TCP/UDP packet as the packet LB sees it: its tuple as a TND_LB_NAT_FWD key, and where L4 starts. */
struct tnd_lb_pkt {
	struct tnd_lb_nat_key key;
	__u32 l4_off;
	__u32 len;
};

/*
 * Parses Ethernet + IPv4/IPv6 (+ extension headers) + TCP/UDP ports into lp (zeroed by the caller).
 * Returns 0 for a TCP or UDP packet that is not a fragment, 1 for anything else (not ours).
 * Global: verified once (see parse.h).
 */
__noinline int tnd_lb_parse(struct __sk_buff *skb, struct tnd_lb_pkt *lp)
{
	struct tnd_lb_nat_key *k;
	__be16 proto, ports[2];
	__u32 off;

	if (!lp)
		return 1;
	k = &lp->key;
	if (tnd_load(skb, 12, &proto, sizeof(proto)) < 0)
		return 1;
	if (proto == bpf_htons(TND_ETH_P_IP)) {
		struct iphdr ip;
		__u8 vihl;

		if (tnd_load(skb, TND_ETH_HLEN, &ip, sizeof(ip)) < 0)
			return 1;
		vihl = *(__u8 *)&ip;
		if ((vihl >> 4) != 4 || (vihl & 0xf) < 5)
			return 1;
		if (bpf_ntohs(ip.frag_off) & (TND_IP_MF | TND_IP_OFFSET))
			return 1;
		k->family = 4;
		k->proto = ip.protocol;
		*(__u32 *)k->saddr = ip.saddr;
		*(__u32 *)k->daddr = ip.daddr;
		off = TND_ETH_HLEN + (vihl & 0xf) * 4;
	} else if (proto == bpf_htons(TND_ETH_P_IPV6)) {
		struct tnd_ipv6_walk w = {};
		struct ipv6hdr ip6;

		if (tnd_load(skb, TND_ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return 1;
		if ((*(__u8 *)&ip6 >> 4) != 6)
			return 1;
		w.off = TND_ETH_HLEN + sizeof(ip6);
		w.nexthdr = ip6.nexthdr;
		if (tnd_ipv6_skip_exthdrs(skb, &w) || w.frag)
			return 1;
		k->family = 6;
		k->proto = w.nexthdr;
		tnd_copy_addr16(k->saddr, (const __u8 *)&ip6.saddr);
		tnd_copy_addr16(k->daddr, (const __u8 *)&ip6.daddr);
		off = w.off;
	} else {
		return 1;
	}
	if (k->proto != IPPROTO_TCP && k->proto != IPPROTO_UDP)
		return 1;
	if (off > TND_DIRECT_MAX_OFF || tnd_load(skb, off, ports, sizeof(ports)) < 0)
		return 1;
	k->sport = ports[0];
	k->dport = ports[1];
	k->dir = TND_LB_NAT_FWD;
	lp->l4_off = off;
	lp->len = skb->len;
	return 0;
}

/*
 * Rewrites the destination (dst = 1) or source (dst = 0) address and port of a TCP/UDP packet from
 * old_* to new_*, fixing the checksums. Addresses: 16 bytes, IPv4 in the first 4. Returns 0 or -1
 * (the packet could not be written: drop it).
 */
static __always_inline int tnd_lb_rewrite(struct __sk_buff *skb, __u8 family, __u8 proto, __u32 l4_off, const int dst,
					  const __u8 *old_addr, const __u8 *new_addr, __be16 old_port, __be16 new_port)
{
	__u32 csum_off = l4_off + (proto == IPPROTO_TCP ? TND_TCP_CSUM_OFF : TND_UDP_CSUM_OFF);
	__u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (family == 4) {
		__be32 o = *(const __u32 *)old_addr;
		__be32 n = *(const __u32 *)new_addr;

		if (o != n &&
		    (bpf_l4_csum_replace(skb, csum_off, o, n, BPF_F_PSEUDO_HDR | mangled | sizeof(n)) < 0 ||
		     bpf_l3_csum_replace(skb, TND_IPV4_CSUM_OFF, o, n, sizeof(n)) < 0 ||
		     bpf_skb_store_bytes(skb, dst ? TND_IPV4_DADDR_OFF : TND_IPV4_SADDR_OFF, &n, sizeof(n), 0) < 0))
			return -1;
	} else {
		__u32 o[4], n[4];
		__s64 diff;

		tnd_copy_addr16((__u8 *)o, old_addr);
		tnd_copy_addr16((__u8 *)n, new_addr);
		diff = bpf_csum_diff(o, sizeof(o), n, sizeof(n), 0);
		if (diff < 0 ||
		    bpf_l4_csum_replace(skb, csum_off, 0, (__u32)diff, BPF_F_PSEUDO_HDR | mangled) < 0 ||
		    bpf_skb_store_bytes(skb, dst ? TND_IPV6_DADDR_OFF : TND_IPV6_SADDR_OFF, n, sizeof(n), 0) < 0)
			return -1;
	}
	if (old_port != new_port &&
	    (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | sizeof(new_port)) < 0 ||
	     bpf_skb_store_bytes(skb, l4_off + (dst ? 2 : 0), &new_port, sizeof(new_port), 0) < 0))
		return -1;
	return 0;
}

/*
 * NodePort reverse NAT, for tnd_from_container: a reply of a connection tnd_from_netdev DNATed to
 * this pod (tnd_lb_nat TND_LB_NAT_REV entry for its tuple) gets its source rewritten back to the
 * frontend address and port the client used. Returns 0 when the packet is not such a reply, 1 when
 * it was rewritten (*redirect = the device the request came in on, 0 = let the kernel route it),
 * -1 when the rewrite failed. Global: verified once, and the lookup is all a non-NodePort reply pays.
 * (It finds the L4 offset itself instead of calling tnd_lb_parse(): one call frame less keeps
 * tnd_from_container within the 512-byte combined stack.)
 */
__noinline int tnd_lb_rev_nat(struct __sk_buff *skb, const struct tnd_pkt *p, __u32 *redirect)
{
	const struct tnd_lb_nat_value *v;
	const struct tnd_ct_key *t;
	struct tnd_lb_nat_key k = {};
	__u32 l4_off;

	if (!p || !redirect)
		return 0;
	t = &p->tuple;
	if (t->proto != IPPROTO_TCP && t->proto != IPPROTO_UDP)
		return 0;
	if (p->no_l4 || (p->ev_flags & (TND_EVF_FRAGMENT | TND_EVF_ICMP_ERROR)))
		return 0;       /* fragments are not translated (see the top of this file) */
	tnd_copy_addr16(k.saddr, t->saddr);
	tnd_copy_addr16(k.daddr, t->daddr);
	k.sport = bpf_htons(t->sport);
	k.dport = bpf_htons(t->dport);
	k.proto = t->proto;
	k.family = t->ip_version;
	k.dir = TND_LB_NAT_REV;
	v = bpf_map_lookup_elem(&tnd_lb_nat, &k);
	if (!v)
		return 0;

	if (k.family == 4) {
		__u8 vihl;

		if (tnd_load(skb, TND_ETH_HLEN, &vihl, sizeof(vihl)) < 0)
			return -1;
		l4_off = TND_ETH_HLEN + (vihl & 0xf) * 4;
	} else {
		struct tnd_ipv6_walk w = {};
		__u8 nh;

		if (tnd_load(skb, TND_ETH_HLEN + 6, &nh, sizeof(nh)) < 0)
			return -1;
		w.off = TND_ETH_HLEN + sizeof(struct ipv6hdr);
		w.nexthdr = nh;
		if (tnd_ipv6_skip_exthdrs(skb, &w) || w.no_l4)
			return -1;
		l4_off = w.off;
	}
	if (tnd_lb_rewrite(skb, k.family, k.proto, l4_off, 0, k.saddr, v->addr, k.sport, v->port))
		return -1;
	*redirect = v->ifindex;
	return 1;
}

#endif /* TND_LB_H */
