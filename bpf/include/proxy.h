/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * L7 redirect: hand a TCP connection that an L7 rule covers to the node's transparent proxy, the
 * way Cilium does with bpf_sk_assign (bpf/lib/proxy.h there), from tnd_from_container (tc ingress
 * of the pod's host veth, before routing: bpf_sk_assign only works at tc ingress).
 *
 * Which connections: the sender's egress policy entry has a proxy port (p->proxy_port, set by
 * tnd_policy_check), or the destination is a pod of this node whose ingress entry for the sender's
 * identity has one (looked up here through the ipcache's ep_id). When the destination's ingress
 * policy denies the sender, nothing is redirected: the packet goes on to tnd_to_container, which
 * drops it, so the proxy (whose upstream connection comes from the node) can never bypass it.
 *
 * How: bpf_skc_lookup_tcp on the packet's own 4-tuple finds the proxy's accepted socket of an
 * ongoing connection (the proxy's listener has IP_TRANSPARENT, so it accepted a connection to the
 * original destination); otherwise the same lookup with the proxy's port finds its listener. The
 * packet is assigned to that socket and marked TND_MARK_MAGIC_TO_PROXY; the agent's policy routing
 * (fwmark -> table TND_PROXY_ROUTE_TABLE: local default route) delivers it locally, and the proxy's
 * getsockname() is the original destination. No listener -> drop 178 (fail closed).
 *
 * Sources outside the node (another node's pods, the world) reach a pod here through the underlay
 * or the overlay device, whose tc ingress programs redirect for the destination's ingress rules
 * (tnd_proxy_from_outside). What still arrives at tnd_to_container for an entry with a proxy port
 * without coming from the proxy (the node itself, NodePort-translated traffic) is dropped there
 * (policy.h): an L7 rule is never bypassed.
 */
#ifndef TND_PROXY_H
#define TND_PROXY_H

#include "common.h"
#include "maps.h"
#include "ipcache.h"
#include "policy.h"

/* The ingress policy of a destination on this node, for a TCP packet from src_identity: its proxy
 * port (0 = no redirect, or the destination is not local / not enforced); *denied when it denies. */
static __always_inline __be16 tnd_proxy_dest_ingress(const struct tnd_pkt *p, __u32 src_identity, int *denied)
{
	const struct tnd_ipcache_value *dst;
	struct tnd_policy_decision d;
	void *pm;

	*denied = 0;
	dst = tnd_ipcache_lookup(p->tuple.daddr, p->tuple.ip_version);
	if (!dst || !dst->ep_id)
		return 0;
	pm = tnd_policy_map(dst->ep_id);
	if (!pm || !tnd_policy_enforced(pm, 0))
		return 0;
	tnd_policy_decide(pm, src_identity, 0, IPPROTO_TCP, bpf_htons(p->tuple.dport), &d);
	if (d.reason) {
		*denied = 1;
		return 0;
	}
	return d.proxy_port;
}

/* The proxy port this packet (sent by a pod of src_identity) goes to, 0 = none. */
static __always_inline __be16 tnd_proxy_wanted(const struct tnd_pkt *p, __u32 src_identity)
{
	__be16 dest_port;
	int denied;

	if (p->no_l4 || p->ct_state == TND_CT_REPLY || p->ct_state == TND_CT_RELATED)
		return 0;
	if (p->tuple.proto == IPPROTO_UDP)
		return p->proxy_port; /* egress DNS rules only: the DNS proxy */
	if (p->tuple.proto != IPPROTO_TCP)
		return 0;
	dest_port = tnd_proxy_dest_ingress(p, src_identity, &denied);
	if (denied)
		return 0;
	return p->proxy_port ? p->proxy_port : dest_port;
}

/* UDP (DNS rules, egress): every datagram goes to the DNS proxy's one socket, bound to the wildcard
 * address on proxy_port with IP_TRANSPARENT; it reads the original destination from
 * IP_ORIGDSTADDR and answers from a transparent socket bound to that address. */
static __always_inline int tnd_proxy_sk_assign_udp(struct __sk_buff *skb, const struct tnd_pkt *p, __be16 proxy_port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 len;
	int ret;

	if (p->tuple.ip_version == 4) {
		__builtin_memcpy(&t.ipv4.saddr, p->tuple.saddr, 4);
		__builtin_memcpy(&t.ipv4.daddr, p->tuple.daddr, 4);
		t.ipv4.sport = bpf_htons(p->tuple.sport);
		t.ipv4.dport = proxy_port;
		len = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->tuple.saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, p->tuple.daddr, 16);
		t.ipv6.sport = bpf_htons(p->tuple.sport);
		t.ipv6.dport = proxy_port;
		len = sizeof(t.ipv6);
	}
	sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TND_DROP_SOCKET_LOOKUP_FAILED;
	ret = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return ret ? TND_DROP_SOCKET_ASSIGN_FAILED : 0;
}

/* Assign the packet to the proxy's socket (see the top). Returns 0, a drop reason, or
 * TND_PROXY_NO_SOCKET when !listener_ok and the proxy has no socket of this connection. */
#define TND_PROXY_NO_SOCKET (-1)
static __always_inline int tnd_proxy_sk_assign(struct __sk_buff *skb, const struct tnd_pkt *p, __be16 proxy_port,
					       int listener_ok)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 len;
	int ret;

	if (p->tuple.ip_version == 4) {
		__builtin_memcpy(&t.ipv4.saddr, p->tuple.saddr, 4);
		__builtin_memcpy(&t.ipv4.daddr, p->tuple.daddr, 4);
		t.ipv4.sport = bpf_htons(p->tuple.sport);
		t.ipv4.dport = bpf_htons(p->tuple.dport);
		len = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->tuple.saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, p->tuple.daddr, 16);
		t.ipv6.sport = bpf_htons(p->tuple.sport);
		t.ipv6.dport = bpf_htons(p->tuple.dport);
		len = sizeof(t.ipv6);
	}
	/* 1. The proxy's socket of this very connection. */
	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT) {
			ret = bpf_sk_assign(skb, sk, 0);
			bpf_sk_release(sk);
			return ret ? TND_DROP_SOCKET_ASSIGN_FAILED : 0;
		}
		bpf_sk_release(sk);
	}
	/* 2. The proxy's listener. */
	if (!listener_ok)
		return TND_PROXY_NO_SOCKET;
	if (p->tuple.ip_version == 4)
		t.ipv4.dport = proxy_port;
	else
		t.ipv6.dport = proxy_port;
	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TND_DROP_SOCKET_LOOKUP_FAILED;
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return TND_DROP_SOCKET_LOOKUP_FAILED;
	}
	ret = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return ret ? TND_DROP_SOCKET_ASSIGN_FAILED : 0;
}

/* Assign, then mark for the proxy's policy routing. One store to skb->mark at a constant offset
 * (two stores in the branches above get merged by clang into a computed ctx pointer, which the
 * verifier refuses). */
static __always_inline int tnd_proxy_assign(struct __sk_buff *skb, const struct tnd_pkt *p, __be16 proxy_port,
					    int listener_ok)
{
	int reason;

	if (p->tuple.proto == IPPROTO_UDP)
		reason = tnd_proxy_sk_assign_udp(skb, p, proxy_port);
	else
		reason = tnd_proxy_sk_assign(skb, p, proxy_port, listener_ok);
	if (reason)
		return reason;
	skb->mark = TND_MARK_MAGIC_TO_PROXY;
	return 0;
}

/*
 * From outside the node (tnd_from_netdev on the underlay, tnd_from_overlay on the VXLAN device), for
 * a destination pod here whose ingress rule for src_identity has a proxy port. No conntrack is
 * consulted there, so only a connection's opening SYN goes to the listener; other packets go to
 * the proxy only when it has a socket of their connection (so replies to this node's own clients
 * are never taken). Returns 1 redirected (and marked), 0 not, or -(drop reason).
 */
static __always_inline int tnd_proxy_from_outside(struct __sk_buff *skb, const struct tnd_pkt *p, __u32 src_identity)
{
	__be16 proxy_port;
	int denied, ret;

	if (p->tuple.proto != IPPROTO_TCP || p->no_l4)
		return 0;
	proxy_port = tnd_proxy_dest_ingress(p, src_identity, &denied);
	if (!proxy_port)
		return 0;
	ret = tnd_proxy_assign(skb, p, proxy_port, (p->tcp_flags & (TND_TCP_SYN | TND_TCP_ACK)) == TND_TCP_SYN);
	if (ret == TND_PROXY_NO_SOCKET)
		return 0;
	return ret ? -ret : 1;
}

/* A packet the proxy sent (its sockets carry TND_MARK_MAGIC_FROM_PROXY). */
static __always_inline int tnd_proxy_sent(const struct __sk_buff *skb)
{
	return (skb->mark & TND_MARK_MAGIC_MASK) == TND_MARK_MAGIC_FROM_PROXY;
}

#endif /* TND_PROXY_H */
