/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The last step of every program: count the packet and report it.
 *   tnd_drop():    metrics at the reason, a drop event (always), TC_ACT_SHOT
 *   tnd_forward(): metrics at reason 0, a trace event if the trace level
 *                  wants one, TC_ACT_OK
 *   tnd_forward_at(): the same, reporting another observation point
 *                  (TND_TRACE_TO_OVERLAY for a packet going into the tunnel)
 *   tnd_pass():    metrics at reason 0 only (ARP: forwarded, never traced)
 * The skb is never modified here.
 */
#ifndef TND_VERDICT_H
#define TND_VERDICT_H

#include "common.h"
#include "events.h"
#include "metrics.h"

static __always_inline int tnd_drop(struct __sk_buff *skb, struct tnd_pkt *p, const struct tnd_hook *h, __u8 reason)
{
	tnd_metrics_count(reason, h->metric_dir, p->len);
	tnd_emit(skb, p, TND_EVENT_DROP, reason, tnd_hook_flags(h));
	return TC_ACT_SHOT;
}

static __always_inline int tnd_pass(const struct tnd_pkt *p, const struct tnd_hook *h)
{
	tnd_metrics_count(0, h->metric_dir, p->len);
	return TC_ACT_OK;
}

/* tnd_forward() reporting another observation point than the hook's (e.g. TND_TRACE_TO_OVERLAY). */
static __always_inline int tnd_forward_at(struct __sk_buff *skb, const struct tnd_pkt *p,
					  const struct tnd_hook *h, __u32 trace_level, __u8 obs_point)
{
	tnd_metrics_count(0, h->metric_dir, p->len);
	if (tnd_trace_wanted(trace_level, p))
		tnd_emit(skb, p, TND_EVENT_TRACE, obs_point, tnd_hook_flags(h));
	return TC_ACT_OK;
}

static __always_inline int tnd_forward(struct __sk_buff *skb, const struct tnd_pkt *p,
				       const struct tnd_hook *h, __u32 trace_level)
{
	return tnd_forward_at(skb, p, h, trace_level, h->obs_point);
}

#endif /* TND_VERDICT_H */
