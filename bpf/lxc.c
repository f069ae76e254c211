// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Endpoint (pod) programs, attached to the pod's host-side veth with tcx:
 *   tnd_from_container: tcx ingress = traffic leaving the pod
 *                       (TRACE_FROM_LXC, metrics EGRESS, CT scope EGRESS,
 *                       source IP verified)
 *   tnd_to_container:   tcx egress = traffic entering the pod
 *                       (TRACE_TO_LXC, metrics INGRESS, CT scope INGRESS)
 * Both run the same pipeline; the hook constant selects the differences
 * and, being constant, lets the compiler specialise each program. Each
 * enforces the policy of its own direction (egress, ingress).
 *
 * NodePort replies: tnd_from_container translates the reply of a connection
 * that tnd_from_netdev (sock.c) DNATed to this pod back to the frontend
 * (lb.h, tnd_lb_rev_nat) after conntrack and policy, which therefore see
 * the pod's own addresses (and the source IP check its own source), and
 * redirects it out of the device the request came in on: routed by the
 * kernel instead, a reply whose source is now a node address would be
 * dropped as a martian. Only CT replies are looked up; the packet's event
 * shows it as the pod sent it.
 *
 * Overlay (overlay.h): tnd_from_container sends a packet whose destination
 * lives on another node (ipcache tunnel_endpoint) into the node's VXLAN
 * device when one is configured, with the pod's identity as the VNI, and
 * reports it at TO_OVERLAY instead of FROM_LXC. tnd_to_container takes the
 * source identity of a packet that came out of the overlay from skb->mark
 * (set by tnd_from_overlay, overlay.c) instead of looking its source up.
 *
 * L7 (proxy.h): tnd_from_container hands a TCP connection an L7 rule covers (its own egress rule,
 * or the ingress rule of a destination pod on this node) to the node's proxy with bpf_sk_assign,
 * reported at TO_PROXY; tnd_to_container reports what the proxy sends at FROM_PROXY.
 *
 * HTTP visibility (visibility.h): on an endpoint that opted in, the start of each HTTP/1.x message
 * that is forwarded without the proxy is copied to tnd_payloads for the agent's L7 flows.
 */
#include "common.h"
#include "maps.h"
#include "parse.h"
#include "endpoint.h"
#include "conntrack.h"
#include "policy.h"
#include "verdict.h"
#include "lb.h"
#include "overlay.h"
#include "proxy.h"
#include "visibility.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline int tnd_lxc(struct __sk_buff *skb, const struct tnd_hook *h)
{
	const struct tnd_endpoint_info *ep;
	struct tnd_settings settings;
	struct tnd_pkt p = {};
	__u32 redirect = 0;
	__be16 proxy_port;
	int from_proxy, reason, ret;

	/* 1. Ours? Packets of other interfaces pass untouched. */
	ep = tnd_endpoint_lookup(skb->ifindex);
	if (!ep)
		return TC_ACT_OK;
	tnd_pkt_init(&p, skb, ep);
	settings = tnd_settings_get();
	/* Read once: the proxy's own packets are reported at from-proxy and never snapped. */
	from_proxy = h->obs_point == TND_TRACE_TO_LXC && tnd_proxy_sent(skb);
	/* From another node through the overlay: the source identity is the one its VNI carried. */
	if (h->obs_point == TND_TRACE_TO_LXC)
		p.remote_id = tnd_overlay_take_mark(skb);

	/* 2. Parse; ARP passes (counted, never traced). */
	reason = tnd_parse(skb, &p);
	if (reason)
		goto drop;
	if (p.eth_proto == TND_ETH_P_ARP)
		return tnd_pass(&p, h);

	/* 3. Anti-spoofing on traffic the pod sends. */
	if (h->check_source && (settings.flags & TND_SETTINGS_SOURCE_IP_CHECK) &&
	    !tnd_source_ip_ok(ep, &p)) {
		reason = TND_DROP_INVALID_SOURCE_IP;
		goto drop;
	}

	/* 4. Conntrack lookup: sets NEW / ESTABLISHED / REPLY / RELATED. */
	tnd_ct_lookup(&p);

	/* 5. Policy of this direction (replies and related ICMP errors pass). */
	reason = tnd_policy_check(skb, &p, h, settings.flags);
	if (reason)
		goto drop;

	/* 6. An admitted new connection gets its conntrack entry. */
	reason = tnd_ct_create(&p, h->ct_scope);
	if (reason)
		goto drop;

	/* 6b. An L7 rule covers it: to the node's proxy (proxy.h). */
	if (h->obs_point == TND_TRACE_FROM_LXC) {
		proxy_port = tnd_proxy_wanted(&p, ep->identity);
		if (proxy_port) {
			reason = tnd_proxy_assign(skb, &p, proxy_port, 1);
			if (reason)
				goto drop;
			return tnd_forward_at(skb, &p, h, settings.trace_level, TND_TRACE_TO_PROXY);
		}
	}

	/* 6c. Proxy-free HTTP visibility, if the endpoint opted in (visibility.h); not for what the
	 * proxy sends, which it reports itself. */
	if (!from_proxy)
		tnd_http_snap(skb, &p, ep, h);

	/* 7. A NodePort reply: source back to the frontend (lb.h). */
	if (h->obs_point == TND_TRACE_FROM_LXC && p.ct_state == TND_CT_REPLY) {
		ret = tnd_lb_rev_nat(skb, &p, &redirect);
		if (ret < 0) {
			reason = TND_DROP_WRITE_ERROR;
			goto drop;
		}
	}

	/* 8. A destination on another node, with an overlay: into the tunnel (overlay.h). */
	if (h->obs_point == TND_TRACE_FROM_LXC && !redirect && settings.overlay_ifindex) {
		ret = tnd_overlay_encap(skb, &p, ep->identity);
		if (ret < 0) {
			reason = TND_DROP_WRITE_ERROR;
			goto drop;
		}
		if (ret > 0) {
			tnd_forward_at(skb, &p, h, settings.trace_level, TND_TRACE_TO_OVERLAY);
			return bpf_redirect(settings.overlay_ifindex, 0);
		}
	}

	/* 9. Count, trace as the level says, forward. What the proxy sends is reported at from-proxy. */
	if (from_proxy)
		return tnd_forward_at(skb, &p, h, settings.trace_level, TND_TRACE_FROM_PROXY);
	ret = tnd_forward(skb, &p, h, settings.trace_level);
	if (redirect)
		return bpf_redirect_neigh(redirect, NULL, 0, 0);
	return ret;

drop:	/* one exit for every drop: one inlined copy of the event code */
	return tnd_drop(skb, &p, h, reason);
}

SEC("tc")
int tnd_from_container(struct __sk_buff *skb)
{
	const struct tnd_hook h = {
		.obs_point = TND_TRACE_FROM_LXC,
		.metric_dir = TND_METRIC_EGRESS,
		.ct_scope = TND_CT_EGRESS,
		.check_source = 1,
	};

	return tnd_lxc(skb, &h);
}

SEC("tc")
int tnd_to_container(struct __sk_buff *skb)
{
	const struct tnd_hook h = {
		.obs_point = TND_TRACE_TO_LXC,
		.metric_dir = TND_METRIC_INGRESS,
		.ct_scope = TND_CT_INGRESS,
		.check_source = 0,
	};

	return tnd_lxc(skb, &h);
}
