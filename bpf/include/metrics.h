/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet and byte counters by (reason, direction), like Cilium's metrics
 * map: index = reason * 4 + direction, reason 0 = forwarded, otherwise
 * the drop reason. Every packet of an endpoint is counted exactly once.
 *
 * The map is per-CPU and a tc program does not nest with itself on one
 * CPU, so plain increments are exact and touch no shared cache line; the
 * agent sums the CPUs. The array lookup is inlined by the verifier.
 */
#ifndef TND_METRICS_H
#define TND_METRICS_H

#include "common.h"
#include "maps.h"

static __always_inline void tnd_metrics_count(__u8 reason, __u8 dir, __u32 len)
{
	__u32 idx = (__u32)reason * 4 + dir;
	struct tnd_metrics_value *m = bpf_map_lookup_elem(&tnd_metrics, &idx);

	if (m) {
		m->packets += 1;
		m->bytes += len;
	}
}

#endif /* TND_METRICS_H */
