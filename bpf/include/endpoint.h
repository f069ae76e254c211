/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Endpoint and settings lookups, and source IP verification.
 *
 * An interface with no tnd_endpoints entry is not a Tendril endpoint: its
 * packets pass untouched, uncounted and without events.
 *
 * Source IP verification (settings.flags & TND_SETTINGS_SOURCE_IP_CHECK,
 * traffic leaving the pod only): the source must be the endpoint's own
 * address of that family. Exempt: IPv4 0.0.0.0 (DHCP discover), IPv6 ::
 * (duplicate address detection) and fe80::/10 (link-local: neighbour
 * discovery, router solicitation). An endpoint without an address of a
 * family (all zeroes) may not send that family, except from the exempt
 * addresses. ARP is not checked (it carries no IP header).
 */
#ifndef TND_ENDPOINT_H
#define TND_ENDPOINT_H

#include "common.h"
#include "maps.h"

static __always_inline const struct tnd_endpoint_info *tnd_endpoint_lookup(__u32 ifindex)
{
	return bpf_map_lookup_elem(&tnd_endpoints, &ifindex);
}

/* A copy of the settings (8 bytes); the defaults apply only if the array
 * could not be read, which does not happen (kept local: no .rodata map). */
static __always_inline struct tnd_settings tnd_settings_get(void)
{
	struct tnd_settings dflt = {
		.trace_level = TND_TRACE_LEVEL_MEDIUM,
		.flags = TND_SETTINGS_SOURCE_IP_CHECK,
	};
	__u32 zero = 0;
	const struct tnd_settings *s = bpf_map_lookup_elem(&tnd_settings, &zero);

	return s ? *s : dflt;
}

static __always_inline void tnd_pkt_init(struct tnd_pkt *p, struct __sk_buff *skb,
					 const struct tnd_endpoint_info *ep)
{
	p->tuple.ifindex = skb->ifindex;
	p->inner.ifindex = skb->ifindex;
	p->len = skb->len;
	p->ep_id = ep->ep_id;
}

static __always_inline int tnd_source_ip_ok(const struct tnd_endpoint_info *ep, const struct tnd_pkt *p)
{
	const __u32 *s = (const __u32 *)p->tuple.saddr;

	switch (p->tuple.ip_version) {
	case 4:
		return s[0] == 0 || s[0] == *(const __u32 *)ep->ipv4;
	case 6:
		if ((s[0] | s[1] | s[2] | s[3]) == 0)                 /* ::         */
			return 1;
		if ((bpf_ntohl(s[0]) & 0xffc00000) == 0xfe800000)      /* fe80::/10  */
			return 1;
		return tnd_addr16_eq(p->tuple.saddr, ep->ipv6);
	}
	return 1;
}

#endif /* TND_ENDPOINT_H */
