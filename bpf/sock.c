// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Service load balancer (kube-proxy replacement). Shares the pinned maps of lxc.o (maps.h).
 *
 * Socket LB, cgroup v2 hooks (attach as links to the pods' cgroups, or once to a parent: the
 * programs apply to every descendant cgroup):
 *   tnd_sock4_connect / tnd_sock6_connect         cgroup/connect4, connect6 (TCP and UDP)
 *   tnd_sock4_sendmsg / tnd_sock6_sendmsg         cgroup/sendmsg4, sendmsg6 (unconnected UDP)
 *   tnd_sock4_recvmsg / tnd_sock6_recvmsg         cgroup/recvmsg4, recvmsg6 (UDP)
 *   tnd_sock4_getpeername / tnd_sock6_getpeername cgroup/getpeername4, getpeername6
 * connect/sendmsg: a destination that is a service frontend ({address, port, protocol, family,
 * slot 0} in tnd_lb_services; the all-zero NodePort wildcard is never looked up) is replaced by a
 * backend (lb.h) before the kernel routes anything, and {socket cookie, backend} -> {frontend,
 * rev_nat_id} is recorded in tnd_lb_sock_revnat. recvmsg/getpeername: a peer found there for this
 * socket is shown as the frontend again, so replies come from the service address (resolvers check
 * it); if the frontend no longer exists with that rev_nat_id the entry is stale: deleted, not used.
 * An IPv6 socket connecting to an IPv4-mapped address (::ffff:a.b.c.d) is balanced with the IPv4
 * service and gets an IPv4-mapped backend.
 *
 * A service with no usable backend refuses the connection at once: connect()/sendmsg() fail with
 * EPERM (what a cgroup hook can return; Cilium answers ECONNREFUSED through its own mechanism), and
 * a drop event with TND_DROP_NO_SERVICE_BACKEND is emitted.
 *
 * Events (tendril_abi.h, "Trace-sock events"): PRE_FWD (the frontend) + POST_FWD (the backend) for
 * every connect(), and for a sendmsg() whose socket had not sent to that backend yet (every
 * sendmsg() at trace level ALL); PRE_REV + POST_REV for reverse translations at level ALL only;
 * none at level NONE. Drops always. The socket LB counts no metrics (there is no packet).
 *
 * Packet LB for NodePort: tnd_from_netdev, SEC("tc"), tcx ingress of the node's underlay device.
 * A TCP/UDP packet (not a fragment) to a frontend flagged TND_SVC_NODEPORT, addressed to the exact
 * frontend address or to the all-zero wildcard when the destination is one of this node's addresses
 * (ipcache identity TND_ID_HOST), is DNATed to a backend: the connection's TND_LB_NAT_FWD entry
 * if it has one (its backend may be TERMINATING: existing connections finish), else a new choice
 * (affinity by client address, Maglev on the tuple hash, or random).
 * Backend that is a pod of this node (ipcache ep_id) or the node itself (TND_ID_HOST): recorded as
 * FWD + REV entries in tnd_lb_nat, and the kernel routes the DNATed packet to it (TC_ACT_OK). Its
 * reply is translated back by tnd_from_container (lxc.c) and redirected out of the device the
 * request came in on.
 * Any other backend (a pod on another node, or outside the cluster; externalTrafficPolicy Cluster,
 * Cilium's SNAT mode): the packet is SNATed as well, to the address the client targeted (a node
 * address) and a port in TND_LB_SNAT_PORT_MIN..MAX, so that the backend replies to this node: the
 * port is the connection's tuple hash mod the range, or one of the next TND_LB_SNAT_RETRIES - 1
 * candidates (stride 7919) when a live connection (a REV entry with a reply in the last
 * TND_LB_SNAT_STALE_S) holds it; none free: drop (TND_DROP_NAT_NO_MAPPING). FWD + REV entries go
 * to tnd_lb_snat, a later packet of the connection reuses its FWD entry (checked after tnd_lb_nat),
 * and the packet is sent with bpf_redirect_neigh out of the ingress device (to the stack it would
 * be a martian: a forwarded packet with a local source). The backend's reply (backend -> node
 * address:SNAT port, matched in tnd_lb_snat before any NodePort lookup) gets source := the frontend
 * and destination := the client, and is redirected out of the device the request came in on.
 * No usable backend: drop (TND_DROP_NO_SERVICE_BACKEND, event + metrics at INGRESS). Translations
 * emit no events (drops do).
 * UDP to port TND_VXLAN_PORT (the overlay's tunnel packets) passes untouched before any lookup.
 * Limits: the client must reach the node directly (replies go out of the ingress device through
 * the neighbour/FIB lookup of bpf_redirect_neigh), and so must the route to a remote backend; a
 * SNATed backend sees the node's address (remote-node), so its policy must allow that, as in
 * Cilium's SNAT mode (no DSR); SNAT ports are not collision-checked beyond the candidates, and
 * entries are not garbage-collected (they age out of the LRU maps); no fragments, TCP and UDP
 * only, no ICMP error translation.
 */
#include "common.h"
#include "maps.h"
#include "endpoint.h"
#include "events.h"
#include "ipcache.h"
#include "metrics.h"
#include "lb.h"
#include "proxy.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---- socket LB ---- */

/* An address as the socket hooks see it (user_ip4/user_ip6 + user_port). */
struct tnd_sock_addr {
	__u8  addr[16];     /* IPv4 (also IPv4-mapped IPv6) in the first 4 bytes */
	__be16 port;
	__u8  family;
	__u8  v4mapped;     /* an IPv6 socket's ::ffff:a.b.c.d */
};

static __always_inline void tnd_sock_read(struct bpf_sock_addr *ctx, const int v6, struct tnd_sock_addr *a)
{
	__u32 *w = (__u32 *)a->addr;

	a->port = (__be16)ctx->user_port;
	a->v4mapped = 0;
	if (!v6) {
		w[0] = ctx->user_ip4;
		w[1] = 0;
		w[2] = 0;
		w[3] = 0;
		a->family = 4;
		return;
	}
	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	a->family = 6;
	if (w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff)) {
		w[0] = w[3];
		w[2] = 0;
		w[3] = 0;
		a->family = 4;
		a->v4mapped = 1;
	}
}

static __always_inline void tnd_sock_write(struct bpf_sock_addr *ctx, const int v6, __u8 v4mapped,
					   const __u8 *addr, __be16 port)
{
	const __u32 *w = (const __u32 *)addr;

	if (!v6) {
		ctx->user_ip4 = w[0];
	} else if (v4mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = w[0];
	} else {
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
	}
	ctx->user_port = port;
}

static __always_inline __u16 tnd_sock_ep_id(void)
{
	__u64 cgid = bpf_get_current_cgroup_id();
	const struct tnd_lb_cgroup *c = bpf_map_lookup_elem(&tnd_lb_cgroups, &cgid);

	return c ? c->ep_id : 0;
}

/*
 * A 4-byte field of the socket (struct bpf_sock) through inline asm: plain C reads let clang share
 * one computed address between loads ("pointer arithmetic on sock prohibited"), as with skb->data.
 */
#define TND_SK_LOAD(sk, field) ({							\
	__u32 __v;									\
	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(__v)				\
		     : "r"(sk), "i"(__builtin_offsetof(struct bpf_sock, field)));	\
	__v;										\
})

/* A trace-sock or drop event of the socket LB: daddr/dport the peer at this point of the translation. */
static __always_inline void tnd_sock_emit(struct bpf_sock_addr *ctx, const int v6, __u8 type, __u8 subtype,
					  const struct tnd_sock_addr *a, const __u8 *daddr, __be16 dport, __u64 cookie)
{
	struct bpf_sock *sk = ctx->sk;
	struct tnd_event *e;
	__u32 *s;

	e = bpf_ringbuf_reserve(&tnd_events, sizeof(*e), 0);
	if (!e) {
		tnd_count_lost();
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->type = type;
	e->subtype = subtype;
	e->ip_version = a->family;
	e->l4_proto = ctx->protocol;
	e->ct_state = TND_CT_NEW;
	e->tcp_flags = 0;
	e->icmp_type = 0;
	e->icmp_code = 0;
	e->sport = 0;
	e->dport = bpf_ntohs(dport);
	e->ep_id = tnd_sock_ep_id();
	e->flags = a->family == 6 ? TND_EVF_IPV6 : 0;
	e->ifindex = 0;
	e->hash = (__u32)cookie;
	e->pkt_len = 0;
	e->remote_id = tnd_ipcache_identity(daddr, a->family);
	s = (__u32 *)e->saddr;
	s[0] = 0;
	s[1] = 0;
	s[2] = 0;
	s[3] = 0;
	if (sk) {
		e->sport = TND_SK_LOAD(sk, src_port);
		if (!v6) {
			s[0] = TND_SK_LOAD(sk, src_ip4);
		} else if (a->v4mapped) {
			if (TND_SK_LOAD(sk, src_ip6[2]) == bpf_htonl(0xffff))
				s[0] = TND_SK_LOAD(sk, src_ip6[3]);
		} else {
			s[0] = TND_SK_LOAD(sk, src_ip6[0]);
			s[1] = TND_SK_LOAD(sk, src_ip6[1]);
			s[2] = TND_SK_LOAD(sk, src_ip6[2]);
			s[3] = TND_SK_LOAD(sk, src_ip6[3]);
		}
	}
	tnd_copy_addr16(e->daddr, daddr);
	bpf_ringbuf_submit(e, 0);
}

/* connect / sendmsg: frontend -> backend. Returns 1 (go on) or 0 (refuse: EPERM). */
static __always_inline int tnd_sock_fwd(struct bpf_sock_addr *ctx, const int v6, const int connect)
{
	const struct tnd_lb_backend *be;
	const struct tnd_lb_value *svc;
	struct tnd_lb_sock_value *old, nv;
	struct tnd_lb_affinity_key aff = {};
	struct tnd_lb_sock_key sk = {};
	struct tnd_lb_key key = {};
	struct tnd_sock_addr a;
	__u32 proto = ctx->protocol;
	__u32 level, id = 0;
	const __u32 *w;
	__u64 cookie;
	int fresh;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	tnd_sock_read(ctx, v6, &a);
	w = (const __u32 *)a.addr;
	if ((w[0] | w[1] | w[2] | w[3]) == 0)   /* 0.0.0.0 / :: is "this host", never a service */
		return 1;
	tnd_copy_addr16(key.addr, a.addr);
	key.port = a.port;
	key.proto = proto;
	key.family = a.family;
	svc = bpf_map_lookup_elem(&tnd_lb_services, &key);
	if (!svc)
		return 1;

	cookie = bpf_get_socket_cookie(ctx);
	*(__u64 *)aff.client = bpf_get_netns_cookie(ctx);
	aff.family = a.family;
	aff.flags = TND_LB_AFF_NETNS;
	be = tnd_lb_select(&key, svc, tnd_lb_cookie_hash(cookie), &aff, &id);
	if (!be) {
		tnd_sock_emit(ctx, v6, TND_EVENT_DROP, TND_DROP_NO_SERVICE_BACKEND, &a, a.addr, a.port, cookie);
		return 0;
	}

	sk.cookie = cookie;
	tnd_copy_addr16(sk.addr, be->addr);
	sk.port = be->port;
	sk.family = a.family;
	old = bpf_map_lookup_elem(&tnd_lb_sock_revnat, &sk);
	fresh = !old || old->port != a.port || old->rev_nat_id != svc->rev_nat_id ||
		*(const __u32 *)old->addr != w[0] || *(const __u32 *)&old->addr[4] != w[1] ||
		*(const __u32 *)&old->addr[8] != w[2] || *(const __u32 *)&old->addr[12] != w[3];
	if (fresh) {
		tnd_copy_addr16(nv.addr, a.addr);
		nv.port = a.port;
		nv.rev_nat_id = svc->rev_nat_id;
		nv.pad = 0;
		bpf_map_update_elem(&tnd_lb_sock_revnat, &sk, &nv, BPF_ANY);
	}
	tnd_sock_write(ctx, v6, a.v4mapped, be->addr, be->port);

	level = tnd_settings_get().trace_level;
	if (level != TND_TRACE_LEVEL_NONE && (connect || fresh || level == TND_TRACE_LEVEL_ALL)) {
		tnd_sock_emit(ctx, v6, TND_EVENT_TRACE_SOCK, TND_XLATE_PRE_FWD, &a, a.addr, a.port, cookie);
		tnd_sock_emit(ctx, v6, TND_EVENT_TRACE_SOCK, TND_XLATE_POST_FWD, &a, sk.addr, sk.port, cookie);
	}
	return 1;
}

/* recvmsg / getpeername: backend -> frontend. Always returns 1 (these hooks cannot refuse). */
static __always_inline int tnd_sock_rev(struct bpf_sock_addr *ctx, const int v6)
{
	const struct tnd_lb_sock_value *v;
	const struct tnd_lb_value *svc;
	struct tnd_lb_sock_key sk = {};
	struct tnd_lb_key key = {};
	struct tnd_sock_addr a;
	__u32 proto = ctx->protocol;
	__u64 cookie;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	tnd_sock_read(ctx, v6, &a);
	cookie = bpf_get_socket_cookie(ctx);
	sk.cookie = cookie;
	tnd_copy_addr16(sk.addr, a.addr);
	sk.port = a.port;
	sk.family = a.family;
	v = bpf_map_lookup_elem(&tnd_lb_sock_revnat, &sk);
	if (!v)
		return 1;
	tnd_copy_addr16(key.addr, v->addr);
	key.port = v->port;
	key.proto = proto;
	key.family = a.family;
	svc = bpf_map_lookup_elem(&tnd_lb_services, &key);
	if (!svc || svc->rev_nat_id != v->rev_nat_id) {
		bpf_map_delete_elem(&tnd_lb_sock_revnat, &sk);
		return 1;
	}
	tnd_sock_write(ctx, v6, a.v4mapped, key.addr, key.port);
	if (tnd_settings_get().trace_level == TND_TRACE_LEVEL_ALL) {
		tnd_sock_emit(ctx, v6, TND_EVENT_TRACE_SOCK, TND_XLATE_PRE_REV, &a, a.addr, a.port, cookie);
		tnd_sock_emit(ctx, v6, TND_EVENT_TRACE_SOCK, TND_XLATE_POST_REV, &a, key.addr, key.port, cookie);
	}
	return 1;
}

SEC("cgroup/connect4")
int tnd_sock4_connect(struct bpf_sock_addr *ctx)
{
	return tnd_sock_fwd(ctx, 0, 1);
}

SEC("cgroup/connect6")
int tnd_sock6_connect(struct bpf_sock_addr *ctx)
{
	return tnd_sock_fwd(ctx, 1, 1);
}

SEC("cgroup/sendmsg4")
int tnd_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return tnd_sock_fwd(ctx, 0, 0);
}

SEC("cgroup/sendmsg6")
int tnd_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return tnd_sock_fwd(ctx, 1, 0);
}

SEC("cgroup/recvmsg4")
int tnd_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return tnd_sock_rev(ctx, 0);
}

SEC("cgroup/recvmsg6")
int tnd_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	return tnd_sock_rev(ctx, 1);
}

SEC("cgroup/getpeername4")
int tnd_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return tnd_sock_rev(ctx, 0);
}

SEC("cgroup/getpeername6")
int tnd_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	return tnd_sock_rev(ctx, 1);
}

/* ---- packet LB: NodePort ---- */

/* The NodePort frontend a packet is addressed to (slot-0 entry, key in *key), or NULL. */
static __always_inline const struct tnd_lb_value *tnd_nodeport_lookup(const struct tnd_lb_nat_key *k,
									struct tnd_lb_key *key, int *wildcard)
{
	const struct tnd_lb_value *svc;

	tnd_copy_addr16(key->addr, k->daddr);
	key->port = k->dport;
	key->proto = k->proto;
	key->family = k->family;
	svc = bpf_map_lookup_elem(&tnd_lb_services, key);
	if (svc && (svc->flags & TND_SVC_NODEPORT))
		return svc;
	__builtin_memset(key->addr, 0, sizeof(key->addr));
	svc = bpf_map_lookup_elem(&tnd_lb_services, key);
	if (svc && (svc->flags & TND_SVC_NODEPORT)) {
		*wildcard = 1;
		return svc;
	}
	return NULL;
}

/* A backend that is a pod of this node (ipcache ep_id) or this node itself: DNAT only, the reply
 * passes tnd_from_container (or the host). Anything else is SNATed. */
static __always_inline int tnd_lb_backend_local(const __u8 *addr, __u8 family)
{
	const struct tnd_ipcache_value *v = tnd_ipcache_lookup(addr, family);

	return v && (v->ep_id || v->identity == TND_ID_HOST);
}

/* SNAT + DNAT of a packet of a connection in tnd_lb_snat (fv: its FWD entry), towards the backend. */
static __always_inline int tnd_snat_fwd_rewrite(struct __sk_buff *skb, const struct tnd_lb_pkt *lp,
						const struct tnd_lb_snat_value *fv)
{
	const struct tnd_lb_nat_key *k = &lp->key;

	if (tnd_lb_rewrite(skb, k->family, k->proto, lp->l4_off, 1, k->daddr, fv->addr, k->dport, fv->port) ||
	    tnd_lb_rewrite(skb, k->family, k->proto, lp->l4_off, 0, k->saddr, fv->nat_addr, k->sport, fv->nat_port))
		return -1;
	return 0;
}

/*
 * A new connection to a backend that is not a pod of this node (see the top of this file): a SNAT
 * port for it (the tuple's hash, then the next TND_LB_SNAT_RETRIES - 1 candidates; a port is free
 * when no REV entry holds it, or when the connection holding it is this client's own, or has seen no
 * reply for TND_LB_SNAT_STALE_S), its FWD + REV entries in tnd_lb_snat, and the SNAT + DNAT of the
 * packet. Returns 0 (*redirect = the device to send it out of) or a drop reason. Global: verified
 * once, and a sibling of tnd_nodeport_lb (the two frames would not fit the 512-byte stack nested).
 */
__noinline int tnd_nodeport_snat_new(struct __sk_buff *skb, struct tnd_lb_pkt *lp, __u32 backend_id,
				     __u32 rev_nat_id, __u32 *redirect)
{
	const __u32 range = TND_LB_SNAT_PORT_MAX - TND_LB_SNAT_PORT_MIN + 1;
	const struct tnd_lb_snat_value *old;
	const struct tnd_lb_backend *be;
	struct tnd_lb_snat_value v = {};   /* the REV entry, then the FWD entry (one frame slot) */
	struct tnd_lb_nat_key rk = {};
	struct tnd_lb_nat_key *k;
	__u32 hash, now_s, i;
	__be16 port;

	if (!lp || !redirect)
		return 0;
	k = &lp->key;
	be = tnd_lb_backend_get(backend_id, k->family, 1);
	if (!be)
		return TND_DROP_NO_SERVICE_BACKEND;
	hash = tnd_lb_tuple_hash(k);
	now_s = bpf_ktime_get_coarse_ns() / TND_NSEC_PER_SEC;

	tnd_copy_addr16(rk.saddr, be->addr);
	tnd_copy_addr16(rk.daddr, k->daddr);
	rk.sport = be->port;
	rk.proto = k->proto;
	rk.family = k->family;
	rk.dir = TND_LB_NAT_REV;
	tnd_copy_addr16(v.addr, k->saddr);
	tnd_copy_addr16(v.nat_addr, k->daddr);
	v.port = k->sport;
	v.nat_port = k->dport;
	v.rev_nat_id = rev_nat_id;
	v.backend_id = backend_id;
	v.ifindex = skb->ifindex;
	v.last_used_s = now_s;

	for (i = 0; i < TND_LB_SNAT_RETRIES; i++) {
		port = bpf_htons(TND_LB_SNAT_PORT_MIN + (hash + i * 7919) % range);
		rk.dport = port;
		old = bpf_map_lookup_elem(&tnd_lb_snat, &rk);
		if (old && (__s32)(now_s - old->last_used_s) <= TND_LB_SNAT_STALE_S &&
		    !(old->port == k->sport && old->nat_port == k->dport && tnd_addr16_eq(old->addr, k->saddr)))
			continue;       /* held by another live connection */
		if (bpf_map_update_elem(&tnd_lb_snat, &rk, &v, BPF_ANY))
			return TND_DROP_CT_MAP_INSERTION_FAILED;
		tnd_copy_addr16(v.addr, be->addr);
		v.port = be->port;
		v.nat_port = port;
		v.ifindex = 0;
		if (bpf_map_update_elem(&tnd_lb_snat, k, &v, BPF_ANY))
			return TND_DROP_CT_MAP_INSERTION_FAILED;
		bpf_map_delete_elem(&tnd_lb_nat, k);   /* a stale local-backend entry of this tuple */
		if (tnd_snat_fwd_rewrite(skb, lp, &v))
			return TND_DROP_WRITE_ERROR;
		*redirect = skb->ifindex;
		return 0;
	}
	return TND_DROP_NAT_NO_MAPPING;
}

/*
 * NodePort reverse SNAT (see the top of this file): a reply of a backend on another node to a SNAT
 * port of this node gets source := the frontend, destination := the client. Returns 0 when the
 * packet is not such a reply, 1 when it was rewritten (*redirect = the device the request came in
 * on), -1 when the rewrite failed. Global: verified once.
 */
__noinline int tnd_nodeport_rev_snat(struct __sk_buff *skb, struct tnd_lb_pkt *lp, __u32 *redirect)
{
	struct tnd_lb_snat_value *v;
	struct tnd_lb_nat_key *k;
	struct tnd_lb_nat_key rk;

	if (!lp || !redirect)
		return 0;
	k = &lp->key;
	rk = *k;
	rk.dir = TND_LB_NAT_REV;
	v = bpf_map_lookup_elem(&tnd_lb_snat, &rk);
	if (!v)
		return 0;
	v->last_used_s = bpf_ktime_get_coarse_ns() / TND_NSEC_PER_SEC;
	if (tnd_lb_rewrite(skb, k->family, k->proto, lp->l4_off, 0, k->saddr, v->nat_addr, k->sport, v->nat_port) ||
	    tnd_lb_rewrite(skb, k->family, k->proto, lp->l4_off, 1, k->daddr, v->addr, k->dport, v->port))
		return -1;
	*redirect = v->ifindex;
	return 1;
}

/*
 * DNAT (local backend) or SNAT + DNAT (existing connection to any other backend) of a packet to a
 * NodePort frontend (see the top of this file). Returns 0 (passed, rewritten or not) or a drop
 * reason; *redirect is set to the device a SNATed packet must leave through; for a new connection
 * whose backend is not local, nothing is rewritten and *snat = backend ID | rev_nat_id << 32, for
 * tnd_nodeport_snat_new(). Global: verified once.
 */
__noinline int tnd_nodeport_lb(struct __sk_buff *skb, struct tnd_lb_pkt *lp, __u32 *redirect, __u64 *snat)
{
	const struct tnd_lb_nat_value *fwd;
	const struct tnd_lb_snat_value *sfwd;
	const struct tnd_lb_backend *be;
	const struct tnd_lb_value *svc;
	struct tnd_lb_affinity_key aff = {};
	struct tnd_lb_nat_value nv = {}, rv = {};
	struct tnd_lb_nat_key rk = {};
	struct tnd_lb_key key = {};
	struct tnd_lb_nat_key *k;
	int wildcard = 0;
	__u32 id = 0, hash;

	if (!lp || !redirect || !snat)
		return 0;
	k = &lp->key;
	svc = tnd_nodeport_lookup(k, &key, &wildcard);
	if (!svc)
		return 0;

	/* A connection already balanced keeps its backend (even a TERMINATING one), and its SNAT. */
	fwd = bpf_map_lookup_elem(&tnd_lb_nat, k);
	if (fwd && tnd_lb_backend_get(fwd->backend_id, k->family, 1)) {
		nv = *fwd;
		goto dnat;
	}
	sfwd = bpf_map_lookup_elem(&tnd_lb_snat, k);
	if (sfwd && tnd_lb_backend_get(sfwd->backend_id, k->family, 1)) {
		if (tnd_snat_fwd_rewrite(skb, lp, sfwd))
			return TND_DROP_WRITE_ERROR;
		*redirect = skb->ifindex;
		return 0;
	}
	/* New: the wildcard is only for this node's own addresses (not for traffic routed through it). */
	if (wildcard && tnd_ipcache_identity(k->daddr, k->family) != TND_ID_HOST)
		return 0;
	tnd_copy_addr16(aff.client, k->saddr);
	aff.family = k->family;
	hash = (svc->flags & TND_SVC_MAGLEV) ? tnd_lb_tuple_hash(k) : bpf_get_prandom_u32();
	be = tnd_lb_select(&key, svc, hash, &aff, &id);
	if (!be)
		return TND_DROP_NO_SERVICE_BACKEND;

	if (!tnd_lb_backend_local(be->addr, k->family)) {
		*snat = id | (__u64)svc->rev_nat_id << 32;
		return 0;
	}

	tnd_copy_addr16(nv.addr, be->addr);
	nv.port = be->port;
	nv.rev_nat_id = svc->rev_nat_id;
	nv.backend_id = id;

	tnd_copy_addr16(rk.saddr, be->addr);
	tnd_copy_addr16(rk.daddr, k->saddr);
	rk.sport = be->port;
	rk.dport = k->sport;
	rk.proto = k->proto;
	rk.family = k->family;
	rk.dir = TND_LB_NAT_REV;
	tnd_copy_addr16(rv.addr, k->daddr);
	rv.port = k->dport;
	rv.rev_nat_id = svc->rev_nat_id;
	rv.backend_id = id;
	rv.ifindex = skb->ifindex;
	if (bpf_map_update_elem(&tnd_lb_nat, &rk, &rv, BPF_ANY) ||
	    bpf_map_update_elem(&tnd_lb_nat, k, &nv, BPF_ANY))
		return TND_DROP_CT_MAP_INSERTION_FAILED;
	bpf_map_delete_elem(&tnd_lb_snat, k);   /* a stale remote-backend entry of this tuple */
dnat:
	if (tnd_lb_rewrite(skb, k->family, k->proto, lp->l4_off, 1, k->daddr, nv.addr, k->dport, nv.port))
		return TND_DROP_WRITE_ERROR;
	return 0;
}

/* The packet as the shared headers (events, proxy.h) see it, from the LB parse. */
static __always_inline void tnd_lb_pkt_to_pkt(struct __sk_buff *skb, const struct tnd_lb_pkt *lp, struct tnd_pkt *p)
{
	p->tuple.ifindex = skb->ifindex;
	tnd_copy_addr16(p->tuple.saddr, lp->key.saddr);
	tnd_copy_addr16(p->tuple.daddr, lp->key.daddr);
	p->tuple.sport = bpf_ntohs(lp->key.sport);
	p->tuple.dport = bpf_ntohs(lp->key.dport);
	p->tuple.proto = lp->key.proto;
	p->tuple.ip_version = lp->key.family;
	p->len = lp->len;
	if (lp->key.proto == IPPROTO_TCP)
		tnd_load(skb, lp->l4_off + 13, &p->tcp_flags, sizeof(p->tcp_flags));
	p->ev_flags = lp->key.family == 6 ? TND_EVF_IPV6 : 0;
	p->remote_id = tnd_ipcache_identity(lp->key.saddr, lp->key.family);
}

SEC("tc")
int tnd_from_netdev(struct __sk_buff *skb)
{
	struct tnd_lb_pkt lp = {};
	struct tnd_pkt p = {};
	__u32 redirect = 0;
	__u64 snat = 0;
	int reason, ret;

	if (tnd_lb_parse(skb, &lp))
		return TC_ACT_OK;
	/* The overlay's VXLAN packets are the node's own business, never a NodePort. */
	if (lp.key.proto == IPPROTO_UDP && lp.key.dport == bpf_htons(TND_VXLAN_PORT))
		return TC_ACT_OK;
	/* A remote backend's reply to a SNATed NodePort connection: back to the client. */
	ret = tnd_nodeport_rev_snat(skb, &lp, &redirect);
	if (ret > 0)
		return bpf_redirect_neigh(redirect, NULL, 0, 0);
	tnd_lb_pkt_to_pkt(skb, &lp, &p);
	if (ret < 0) {
		reason = TND_DROP_WRITE_ERROR;
		goto drop;
	}
	/* An L7 ingress rule of the destination pod (not a NodePort: its destination is the node) */
	ret = tnd_proxy_from_outside(skb, &p, p.remote_id);
	if (ret < 0) {
		reason = -ret;
		goto drop;
	}
	if (ret > 0) {
		if (p.tcp_flags & (TND_TCP_SYN | TND_TCP_FIN | TND_TCP_RST))
			tnd_emit(skb, &p, TND_EVENT_TRACE, TND_TRACE_TO_PROXY, 0);
		return TC_ACT_OK;
	}
	reason = tnd_nodeport_lb(skb, &lp, &redirect, &snat);
	if (!reason && snat)
		reason = tnd_nodeport_snat_new(skb, &lp, (__u32)snat, (__u32)(snat >> 32), &redirect);
	if (!reason)
		return redirect ? bpf_redirect_neigh(redirect, NULL, 0, 0) : TC_ACT_OK;

drop:	/* event as for any packet (ports host order), peer = the client */
	tnd_metrics_count(reason, TND_METRIC_INGRESS, lp.len);
	tnd_emit(skb, &p, TND_EVENT_DROP, reason, 0);
	return TC_ACT_SHOT;
}
