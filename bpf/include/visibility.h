/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Proxy-free HTTP visibility: on an endpoint with TND_EPF_HTTP_VISIBILITY,
 * a forwarded TCP segment whose payload starts like an HTTP/1.x request line
 * ("GET ", "POST", ...) or status line ("HTTP") has its first TND_SNAP_LEN
 * bytes copied to tnd_payloads. The agent parses the line, pairs requests
 * with responses per connection and emits L7 flows (hubble/visibility).
 *
 * Cost: endpoints without the flag pay one bit test per packet; with it,
 * segments without payload pay nothing more, others one 4-byte load and a
 * comparison, and only message starts are copied. A message's later
 * segments (bodies) never match, so an upload costs one snap.
 *
 * Limits (by design): plain text only (TLS looks like nothing here); only
 * what the first TND_SNAP_LEN bytes of a segment hold is seen (pipelined
 * messages sharing a segment only when they end inside the snap, lines
 * longer than the snap cut: the agent truncates long URLs).
 */
#ifndef TND_VISIBILITY_H
#define TND_VISIBILITY_H

#include "common.h"
#include "maps.h"
#include "ipcache.h"

/* The first four payload bytes as a little-endian u32. */
#define TND_WORD(a, b, c, d) ((__u32)(a) | (__u32)(b) << 8 | (__u32)(c) << 16 | (__u32)(d) << 24)

static __always_inline int tnd_http_start(__u32 w)
{
	switch (w) {
	case TND_WORD('G', 'E', 'T', ' '):
	case TND_WORD('P', 'O', 'S', 'T'):
	case TND_WORD('P', 'U', 'T', ' '):
	case TND_WORD('H', 'E', 'A', 'D'):
	case TND_WORD('D', 'E', 'L', 'E'):
	case TND_WORD('P', 'A', 'T', 'C'):
	case TND_WORD('O', 'P', 'T', 'I'):
	case TND_WORD('C', 'O', 'N', 'N'):
	case TND_WORD('T', 'R', 'A', 'C'):
	case TND_WORD('H', 'T', 'T', 'P'):
		return 1;
	}
	return 0;
}

static __always_inline void tnd_count_payload_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&tnd_payloads_lost, &zero);

	if (lost)
		*lost += 1;
}

static __always_inline void tnd_http_snap(struct __sk_buff *skb, const struct tnd_pkt *p,
					  const struct tnd_endpoint_info *ep, const struct tnd_hook *h)
{
	struct tnd_payload *e;
	__u32 word, len, cap;
	int ingress = h->metric_dir == TND_METRIC_INGRESS;

	if (!(ep->flags & TND_EPF_HTTP_VISIBILITY) || p->tuple.proto != IPPROTO_TCP || !p->payload_off)
		return;
	if (skb->len <= p->payload_off + 4)
		return;
	len = skb->len - p->payload_off;
	if (bpf_skb_load_bytes(skb, p->payload_off, &word, sizeof(word)) < 0 || !tnd_http_start(word))
		return;
	cap = len < TND_SNAP_LEN ? len : TND_SNAP_LEN;
	e = bpf_ringbuf_reserve(&tnd_payloads, sizeof(*e), 0);
	if (!e) {
		tnd_count_payload_lost();
		return;
	}
	/* cap is 5..128 already; the mask states it in a form the verifier tracks (1..128). */
	cap = ((cap - 1) & (TND_SNAP_LEN - 1)) + 1;
	if (bpf_skb_load_bytes(skb, p->payload_off, e->data, cap) < 0) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->ep_id = p->ep_id;
	e->flags = ingress ? TND_EVF_INGRESS : 0;
	e->ip_version = p->tuple.ip_version;
	e->pad = 0;
	e->cap_len = cap;
	e->sport = p->tuple.sport;
	e->dport = p->tuple.dport;
	e->remote_id = p->remote_id ? p->remote_id : tnd_peer_identity(p, ingress);
	e->seq = p->tcp_seq;
	e->payload_len = len;
	tnd_copy_addr16(e->saddr, p->tuple.saddr);
	tnd_copy_addr16(e->daddr, p->tuple.daddr);
	bpf_ringbuf_submit(e, 0);
}

#endif /* TND_VISIBILITY_H */
