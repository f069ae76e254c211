/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map of the datapath. Names are a contract with the Python agent
 * (src/tendril/bpf); all maps are pinned by name (LIBBPF_PIN_BY_NAME) so
 * a restarted agent, or an upgraded object, reuses them: conntrack and
 * settings survive restarts and events queue while no agent runs.
 */
#ifndef TND_MAPS_H
#define TND_MAPS_H

#include "common.h"

#define TND_RINGBUF_DEFAULT_SIZE (4U << 20)   /* the agent may resize before load */
#define TND_CT_MAX_ENTRIES       65536
#define TND_ENDPOINTS_MAX        4096

/* Events (struct tnd_event), read in batches by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, TND_RINGBUF_DEFAULT_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_events SEC(".maps");

/* Events that did not fit in tnd_events: received + lost = produced. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_lost SEC(".maps");

/* HTTP visibility snaps (struct tnd_payload, visibility.h): a ring of their own, so the
 * flow events keep one fixed record size and a burst of snaps cannot crowd flows out. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4U << 20);  /* ~21,000 snaps: about a second of a busy node's HTTP */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_payloads SEC(".maps");

/* Snaps that did not fit in tnd_payloads. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_payloads_lost SEC(".maps");

/* Conntrack. LRU so a full table evicts the coldest flow instead of
 * refusing new ones; the agent's GC deletes entries past expires_ns. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TND_CT_MAX_ENTRIES);
	__type(key, struct tnd_ct_key);
	__type(value, struct tnd_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_ct SEC(".maps");

/* Packet/byte counters, index = reason * 4 + direction (reason 0 = forwarded).
 * Per-CPU: no atomics and no cache-line bouncing on the hot path. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TND_METRICS_ENTRIES);
	__type(key, __u32);
	__type(value, struct tnd_metrics_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_metrics SEC(".maps");

/* Endpoints by host-side veth ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TND_ENDPOINTS_MAX);
	__type(key, __u32);
	__type(value, struct tnd_endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_endpoints SEC(".maps");

/* Agent-written settings (one entry). Note: a freshly created map is all
 * zeroes = trace level ALL, source check off; the agent writes its
 * defaults (MEDIUM, source check on) before attaching the programs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tnd_settings);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_settings SEC(".maps");

/* ipcache: peer address/prefix -> security identity (longest prefix wins; no entry = world).
 * Written by the agent; read for policy and for every event's remote_id. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, TND_IPCACHE_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);   /* required for LPM tries */
	__type(key, struct tnd_ipcache_key);
	__type(value, struct tnd_ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_ipcache SEC(".maps");

/*
 * Policy: endpoint ID -> that endpoint's policy (an LPM trie of tnd_policy_key -> tnd_policy_value).
 * The agent creates each inner map itself (same type, key/value size and flags as this template;
 * the kernel does not compare max_entries for LPM inner maps) and swaps it in with one update of the
 * outer array, so a packet sees either the whole old or the whole new policy. No inner map = the
 * endpoint is not policed in either direction.
 *
 * The template gives sizes, not __type(): clang emits the key/value structs of a map nested in
 * another as BTF forward declarations, on which libbpf 1.1 fails ("can't determine key size").
 * The outer map pins by name and is reused like the others (libbpf compares type, key/value size,
 * max_entries and flags of the outer map), so policies survive agent restarts and upgrades.
 */
struct tnd_policy_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, TND_POLICY_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, sizeof(struct tnd_policy_key));
	__uint(value_size, sizeof(struct tnd_policy_value));
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, TND_POLICY_ENDPOINTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct tnd_policy_inner);
} tnd_policy SEC(".maps");

/*
 * ---- Service load balancing (tendril_abi.h describes keys and values; lb.h the datapath) ----
 * Declared here so every object (lxc.o, sock.o) pins and reuses the same maps by name. The maps the
 * agent writes are not preallocated (memory follows the number of services); the ones the datapath
 * writes are LRU (a full table evicts the coldest entry instead of failing a connection), which the
 * kernel always preallocates.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TND_LB_SERVICES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tnd_lb_key);
	__type(value, struct tnd_lb_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TND_LB_BACKENDS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);                     /* backend ID (0 is never a backend) */
	__type(value, struct tnd_lb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TND_LB_SERVICES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);                     /* rev_nat_id */
	__type(value, struct tnd_lb_revnat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_lb_revnat SEC(".maps");

/*
 * Maglev: rev_nat_id -> that service's lookup table, an ARRAY of backend IDs whose size M (a prime,
 * usually TND_MAGLEV_DEFAULT_M) the agent chooses per table. BPF_F_INNER_MAP on the template and on
 * every inner map is what lets inner arrays differ in max_entries; the program reads M from the inner
 * map itself. Sizes instead of __type(), as for tnd_policy (libbpf 1.1 and nested BTF types).
 */
struct tnd_lb_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TND_MAGLEV_DEFAULT_M);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, TND_LB_SERVICES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);                     /* rev_nat_id */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct tnd_lb_maglev_inner);
} tnd_lb_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TND_LB_AFFINITY_MAX);
	__type(key, struct tnd_lb_affinity_key);
	__type(value, struct tnd_lb_affinity_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_lb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TND_LB_SOCK_REVNAT_MAX);
	__type(key, struct tnd_lb_sock_key);
	__type(value, struct tnd_lb_sock_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_lb_sock_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TND_LB_NAT_MAX);
	__type(key, struct tnd_lb_nat_key);
	__type(value, struct tnd_lb_nat_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_lb_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TND_LB_SNAT_MAX);
	__type(key, struct tnd_lb_nat_key);
	__type(value, struct tnd_lb_snat_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_lb_snat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TND_LB_CGROUPS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);                     /* cgroup v2 id */
	__type(value, struct tnd_lb_cgroup);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tnd_lb_cgroups SEC(".maps");

#endif /* TND_MAPS_H */
