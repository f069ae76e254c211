// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The receiving end of the VXLAN overlay. Shares the pinned maps of lxc.o (maps.h), like sock.o.
 *
 * tnd_from_overlay: SEC("tc"), tcx ingress of the node's VXLAN device (collect-metadata mode, see
 * tendril_abi.h "Overlay"), which has already stripped the outer headers: the packet is the inner
 * Ethernet frame, sent by a pod of another node through tnd_from_container (lxc.c, overlay.h).
 *   1. bpf_skb_get_tunnel_key(): the VNI is the source's security identity (reserved HOST 1 becomes
 *      REMOTE_NODE 6, 0 becomes WORLD 2). No tunnel key (the program on a device that is not a
 *      collect-metadata tunnel): drop, TND_DROP_NO_TUNNEL_KEY (Cilium's "Error retrieving tunnel key").
 *   2. Parse the inner packet (parse.h); ARP passes as it is; an invalid packet is dropped with the
 *      parser's reason.
 *   3. skb->mark = identity << TND_MARK_IDENTITY_SHIFT | TND_MARK_MAGIC_IDENTITY: the kernel routes
 *      the packet to the destination pod's veth (TC_ACT_OK), where tnd_to_container takes the
 *      identity from the mark (policy and events) and clears it.
 *   4. A trace event at TND_TRACE_FROM_OVERLAY: ep_id 0, ifindex = the VXLAN device, remote_id = the
 *      source identity, ct_state 0 (there is no conntrack here). Sampling: trace level ALL every
 *      packet; MEDIUM (no conntrack to tell a new flow) TCP SYN/FIN/RST and ICMP errors; NONE none.
 *      The pod's tnd_to_container reports every flow at TO_LXC anyway.
 * Metrics: drops only, at TND_METRIC_INGRESS (a forwarded packet is counted once, by the endpoint
 * program it reaches), like tnd_from_netdev.
 */
#include "common.h"
#include "maps.h"
#include "parse.h"
#include "endpoint.h"
#include "events.h"
#include "metrics.h"
#include "overlay.h"
#include "proxy.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline int tnd_overlay_trace_wanted(__u32 level, const struct tnd_pkt *p)
{
	if (level == TND_TRACE_LEVEL_ALL)
		return 1;
	if (level == TND_TRACE_LEVEL_NONE)
		return 0;
	return (p->tcp_flags & (TND_TCP_SYN | TND_TCP_FIN | TND_TCP_RST)) || (p->ev_flags & TND_EVF_ICMP_ERROR);
}

SEC("tc")
int tnd_from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct tnd_settings settings;
	struct tnd_pkt p = {};
	__u32 identity;
	int reason, ret;

	p.tuple.ifindex = skb->ifindex;
	p.inner.ifindex = skb->ifindex;
	p.len = skb->len;
	settings = tnd_settings_get();

	reason = tnd_parse(skb, &p);
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		reason = TND_DROP_NO_TUNNEL_KEY;
	if (reason)
		goto drop;
	if (p.eth_proto == TND_ETH_P_ARP)
		return TC_ACT_OK;

	identity = tnd_overlay_vni_identity(key.tunnel_id);
	p.remote_id = identity;
	/* An L7 ingress rule of the destination pod: to the node's proxy (proxy.h). */
	ret = tnd_proxy_from_outside(skb, &p, identity);
	if (ret < 0) {
		reason = -ret;
		goto drop;
	}
	if (ret > 0) {
		if (tnd_overlay_trace_wanted(settings.trace_level, &p))
			tnd_emit(skb, &p, TND_EVENT_TRACE, TND_TRACE_TO_PROXY, 0);
		return TC_ACT_OK;
	}
	skb->mark = tnd_overlay_mark(identity);
	if (tnd_overlay_trace_wanted(settings.trace_level, &p))
		tnd_emit(skb, &p, TND_EVENT_TRACE, TND_TRACE_FROM_OVERLAY, 0);
	return TC_ACT_OK;

drop:
	/* The source identity when it is known, else world (an event's remote_id is never looked up
	 * from the ipcache here: the ipcache says where the source lives, not who sent this packet). */
	p.remote_id = reason == TND_DROP_NO_TUNNEL_KEY ? TND_ID_WORLD : tnd_overlay_vni_identity(key.tunnel_id);
	tnd_metrics_count(reason, TND_METRIC_INGRESS, p.len);
	tnd_emit(skb, &p, TND_EVENT_DROP, reason, 0);
	return TC_ACT_SHOT;
}
