/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Event emission into the tnd_events ring buffer, and the trace sampling
 * policy.
 *
 * Records are reserved in place and every byte is written (reserved
 * memory is not zeroed), then submitted with flags 0: the kernel then
 * wakes the reader only when it had caught up with the ring (consumer
 * position == this record), i.e. at most once per batch the reader drains,
 * which is already the adaptive behaviour BPF_RB_NO_WAKEUP/FORCE_WAKEUP
 * would be used to build, and never leaves a record without a wakeup.
 *
 * When the ring is full the event is counted in tnd_lost (per-CPU, plain
 * increment), so received + lost = produced, exactly.
 *
 * Trace levels (settings.trace_level):
 *   ALL     every forwarded IP packet (ARP is never traced);
 *   MEDIUM  (Cilium's monitor aggregation "medium") a forwarded packet that
 *           - created its conntrack entry (ct_state NEW, including a reopened
 *             closing TCP entry and ICMP errors with no entry), or
 *           - is the first reply of its entry (set SEEN_REPLY), or
 *           - is TCP with SYN, FIN or RST set, or
 *           - is an ICMP/ICMPv6 error;
 *           so an established flow costs nothing until it closes;
 *   NONE    no traces.
 * Drops always produce an event, whatever the level, and so do policy verdicts (policy.h).
 *
 * Every event of an IP packet carries the peer's identity (remote_id): the one the policy step
 * looked up, else an ipcache lookup made here, only for packets that emit an event.
 */
#ifndef TND_EVENTS_H
#define TND_EVENTS_H

#include "common.h"
#include "maps.h"
#include "ipcache.h"

static __always_inline void tnd_count_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&tnd_lost, &zero);

	if (lost)
		*lost += 1;
}

/* Event flags that depend only on the attach point: which way the packet crosses the endpoint. */
static __always_inline __u16 tnd_hook_flags(const struct tnd_hook *h)
{
	return h->metric_dir == TND_METRIC_INGRESS ? TND_EVF_INGRESS : 0;
}

/* hook_flags: tnd_hook_flags() plus any event-specific flags (policy verdicts). */
static __always_inline void tnd_emit(struct __sk_buff *skb, const struct tnd_pkt *p, __u8 type, __u8 subtype,
				     __u16 hook_flags)
{
	__u32 remote_id = p->remote_id;
	struct tnd_event *e;

	if (!remote_id && p->tuple.ip_version)
		remote_id = tnd_peer_identity(p, hook_flags & TND_EVF_INGRESS);
	e = bpf_ringbuf_reserve(&tnd_events, sizeof(*e), 0);
	if (!e) {
		tnd_count_lost();
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->type = type;
	e->subtype = subtype;
	e->ip_version = p->tuple.ip_version;
	e->l4_proto = p->tuple.proto;
	e->ct_state = p->ct_state;
	e->tcp_flags = p->tcp_flags;
	e->icmp_type = p->icmp_type;
	e->icmp_code = p->icmp_code;
	e->sport = p->tuple.sport;
	e->dport = p->tuple.dport;
	e->ep_id = p->ep_id;
	e->flags = p->ev_flags | hook_flags;
	e->ifindex = p->tuple.ifindex;
	e->hash = bpf_get_hash_recalc(skb);
	e->pkt_len = p->len;
	e->remote_id = remote_id;
	tnd_copy_addr16(e->saddr, p->tuple.saddr);
	tnd_copy_addr16(e->daddr, p->tuple.daddr);
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int tnd_trace_wanted(__u32 level, const struct tnd_pkt *p)
{
	if (level == TND_TRACE_LEVEL_ALL)
		return 1;
	if (level == TND_TRACE_LEVEL_NONE)
		return 0;
	/* MEDIUM, and any unknown level */
	return p->ct_state == TND_CT_NEW || p->first_reply ||
	       (p->tcp_flags & (TND_TCP_SYN | TND_TCP_FIN | TND_TCP_RST)) ||
	       (p->ev_flags & TND_EVF_ICMP_ERROR);
}

#endif /* TND_EVENTS_H */
