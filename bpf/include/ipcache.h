/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ipcache: the security identity of a peer address, by longest-prefix match in tnd_ipcache (like
 * Cilium's ipcache). An address with no covering entry is TND_ID_WORLD. The peer is the packet's
 * destination for traffic leaving the pod and its source for traffic entering it (outer header for
 * ICMP errors). Entries of remote pods also carry the underlay address of their node
 * (tunnel_endpoint), which the overlay uses (overlay.h).
 */
#ifndef TND_IPCACHE_H
#define TND_IPCACHE_H

#include "common.h"
#include "maps.h"

/* The key's pad[3] + family form one 32-bit word: family is its last byte (little-endian target). */
_Static_assert(__builtin_offsetof(struct tnd_ipcache_key, family) == 7 &&
	       __builtin_offsetof(struct tnd_ipcache_key, addr) == 8 && sizeof(struct tnd_ipcache_key) == 24,
	       "struct tnd_ipcache_key layout changed: update tnd_ipcache_identity()");

/* The ipcache entry covering addr (16 bytes as in struct tnd_ct_key: IPv4 in the first 4, the rest
 * zero), or NULL. */
static __always_inline const struct tnd_ipcache_value *tnd_ipcache_lookup(const __u8 *addr, __u8 ip_version)
{
	struct tnd_ipcache_key k;

	k.prefixlen = ip_version == 6 ? 32 + 128 : 32 + 32;
	*(__u32 *)k.pad = (__u32)ip_version << 24;
	tnd_copy_addr16(k.addr, addr);
	return bpf_map_lookup_elem(&tnd_ipcache, &k);
}

static __always_inline __u32 tnd_ipcache_identity(const __u8 *addr, __u8 ip_version)
{
	const struct tnd_ipcache_value *v = tnd_ipcache_lookup(addr, ip_version);

	return v ? v->identity : TND_ID_WORLD;
}

/* The peer of p as seen from the endpoint: destination on egress, source on ingress. */
static __always_inline __u32 tnd_peer_identity(const struct tnd_pkt *p, int ingress)
{
	return tnd_ipcache_identity(ingress ? p->tuple.saddr : p->tuple.daddr, p->tuple.ip_version);
}

#endif /* TND_IPCACHE_H */
