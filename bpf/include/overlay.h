/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The VXLAN overlay, Cilium's way: the source's security identity travels in the VNI (layout and
 * constants: tendril_abi.h, "Overlay").
 *
 * Send, tnd_overlay_encap() from tnd_from_container (lxc.c), after policy, conntrack and NodePort
 * reverse NAT, when settings.overlay_ifindex is set: the destination's ipcache entry names the node
 * that hosts it (tunnel_endpoint); without one the packet goes to the stack as before (a local pod,
 * the node, the world, or a remote pod in native-routing mode, routed by the kernel). With one:
 *   inner Ethernet destination = TND_OVERLAY_MAC (every node's VXLAN device has it, so the frame is
 *   PACKET_HOST where it comes out), source = the MAC the pod sent it to (its host veth: never the
 *   overlay MAC, which the VXLAN driver would take for a loop and drop), then the tunnel key
 *   {remote = tunnel_endpoint, VNI = the endpoint's identity, ttl 64, no UDP checksum}; the caller
 *   reports the packet at TND_TRACE_TO_OVERLAY and redirects it to the overlay device. The device,
 *   in collect-metadata mode, builds the outer IPv4/UDP headers (source address by route lookup
 *   towards the remote node) and sends it out of the underlay.
 *
 * Receive, tnd_from_overlay (overlay.c) on tc ingress of the VXLAN device: see there; it passes the
 * source identity to tnd_to_container in skb->mark (tnd_overlay_mark / tnd_overlay_take_mark).
 */
#ifndef TND_OVERLAY_H
#define TND_OVERLAY_H

#include "common.h"
#include "maps.h"
#include "ipcache.h"
#include "parse.h"

#define TND_OVERLAY_TTL 64

_Static_assert(sizeof(struct tnd_ipcache_value) == 12, "struct tnd_ipcache_value size changed");

/* Byte i (0 = first on the wire) of TND_OVERLAY_MAC. */
#define TND_OVERLAY_MAC_BYTE(i) ((__u8)((TND_OVERLAY_MAC >> (8 * (5 - (i)))) & 0xff))

/* The source identity a packet of the overlay carried in its VNI, as the receiving node sees it. */
static __always_inline __u32 tnd_overlay_vni_identity(__u64 vni)
{
	__u32 id = (__u32)vni;

	if (id == TND_ID_UNKNOWN)
		return TND_ID_WORLD;
	if (id == TND_ID_HOST)          /* the sending node itself: a remote node here */
		return TND_ID_REMOTE_NODE;
	return id;
}

static __always_inline __u32 tnd_overlay_mark(__u32 identity)
{
	return identity << TND_MARK_IDENTITY_SHIFT | TND_MARK_MAGIC_IDENTITY;
}

/*
 * For tnd_to_container: the source identity tnd_from_overlay left in skb->mark, or 0 when the packet
 * did not come through the overlay. The mark is cleared: it has served its purpose, and nothing
 * after the pod's veth may read it as anything else.
 */
static __always_inline __u32 tnd_overlay_take_mark(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;

	if ((mark & TND_MARK_MAGIC_MASK) != TND_MARK_MAGIC_IDENTITY)
		return 0;
	skb->mark = 0;
	return mark >> TND_MARK_IDENTITY_SHIFT;
}

/*
 * Encapsulation step of tnd_from_container (see the top of this file). src_identity: the sending
 * endpoint's identity (the VNI). Returns 0 when the destination is not behind the overlay (packet
 * untouched), 1 when the packet is ready to be redirected to the overlay device (p->remote_id is
 * then the destination's identity), -1 when it could not be written (drop it: TND_DROP_WRITE_ERROR).
 * Global: verified once, and all a packet for a local destination pays is one ipcache lookup.
 */
__noinline int tnd_overlay_encap(struct __sk_buff *skb, struct tnd_pkt *p, __u32 src_identity)
{
	const struct tnd_ipcache_value *v;
	struct bpf_tunnel_key key = {};
	__u8 macs[12] __attribute__((aligned(4)));
	__be32 remote;

	if (!p || !p->tuple.ip_version)
		return 0;
	v = tnd_ipcache_lookup(p->tuple.daddr, p->tuple.ip_version);
	if (!v)
		return 0;
	remote = v->tunnel_endpoint;
	if (!remote)
		return 0;
	if (!p->remote_id)
		p->remote_id = v->identity;

	/* destination MAC -> source; overlay MAC -> destination */
	if (tnd_load(skb, 0, macs, sizeof(macs)) < 0)
		return -1;
	__builtin_memcpy(macs + 6, macs, 6);
	macs[0] = TND_OVERLAY_MAC_BYTE(0);
	macs[1] = TND_OVERLAY_MAC_BYTE(1);
	macs[2] = TND_OVERLAY_MAC_BYTE(2);
	macs[3] = TND_OVERLAY_MAC_BYTE(3);
	macs[4] = TND_OVERLAY_MAC_BYTE(4);
	macs[5] = TND_OVERLAY_MAC_BYTE(5);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		return -1;

	key.tunnel_id = src_identity;
	key.remote_ipv4 = bpf_ntohl(remote);    /* the helper takes it in host byte order */
	key.tunnel_ttl = TND_OVERLAY_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return -1;
	return 1;
}

#endif /* TND_OVERLAY_H */
