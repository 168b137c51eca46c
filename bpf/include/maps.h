/* Every map of the datapath. Sizes and the pin directory come from the agent as -D flags
 * (bpf/loader.py); maps marked "pinned" survive an agent restart, so counters continue. */
#ifndef LUMEN_MAPS_H
#define LUMEN_MAPS_H

#include "types.h"

#ifndef LUMEN_PIN_DIR
#define LUMEN_PIN_DIR "/sys/fs/bpf/lumen"
#endif
#ifndef LUMEN_FLOW_TABLE_SIZE
#define LUMEN_FLOW_TABLE_SIZE 65536
#endif
#ifndef LUMEN_SOURCE_TABLE_SIZE
#define LUMEN_SOURCE_TABLE_SIZE 16384
#endif
#ifndef LUMEN_ENDPOINT_TABLE_SIZE
#define LUMEN_ENDPOINT_TABLE_SIZE 4096
#endif
#ifndef LUMEN_IPCACHE_SIZE
#define LUMEN_IPCACHE_SIZE 65536
#endif
#ifndef LUMEN_POLICY_MAP_SIZE
#define LUMEN_POLICY_MAP_SIZE 262144
#endif
#ifndef LUMEN_CIDR_MAP_SIZE
#define LUMEN_CIDR_MAP_SIZE 32768
#endif
#ifndef LUMEN_POD_SLOTS
#define LUMEN_POD_SLOTS 256
#endif
#ifndef LUMEN_POLICY_COUNT_SIZE
#define LUMEN_POLICY_COUNT_SIZE 16384
#endif
#ifndef LUMEN_RINGBUF_PAGES
#define LUMEN_RINGBUF_PAGES 256
#endif

/* Flow table, pinned. Key: struct flow_key (5-tuple + direction). Value: struct flow_stats.
 * LRU: a full table evicts the least recently used flow (LUMEN_STAT_FLOWS_CREATED shows the churn). */
BPF_TABLE_PINNED("lru_hash", struct flow_key, struct flow_stats, lumen_flows, LUMEN_FLOW_TABLE_SIZE,
                 LUMEN_PIN_DIR "/lumen_flows");

/* Per-source counters of sources that are not a local pod with a counter slot (host, other nodes, the
 * world; those pods' are tx in lumen_pods), pinned. Key: struct endpoint_key (source address).
 * Value: struct source_counters, one per CPU (no atomics on the packet path). */
BPF_TABLE_PINNED("percpu_hash", struct endpoint_key, struct source_counters, lumen_sources,
                 LUMEN_SOURCE_TABLE_SIZE, LUMEN_PIN_DIR "/lumen_sources");

/* Local endpoints, pinned; written by the CNI plugin at ADD, removed at DEL.
 * Key: struct endpoint_key (pod address). Value: struct endpoint_info. */
BPF_TABLE_PINNED("hash", struct endpoint_key, struct endpoint_info, lumen_endpoints,
                 LUMEN_ENDPOINT_TABLE_SIZE, LUMEN_PIN_DIR "/lumen_endpoints");

/* Identities of addresses that are not local pods (the node's own, other nodes' pods), pinned.
 * Key: struct endpoint_key. Value: u32 identity. Written by the agent. */
BPF_TABLE_PINNED("hash", struct endpoint_key, u32, lumen_ipcache, LUMEN_IPCACHE_SIZE,
                 LUMEN_PIN_DIR "/lumen_ipcache");

/* ipBlock prefixes -> CIDR identity, pinned. Two halves (slot 0/1) so a policy change swaps at once. */
BPF_TABLE_PINNED("lpm_trie", struct cidr_key, u32, lumen_cidrs, LUMEN_CIDR_MAP_SIZE,
                 LUMEN_PIN_DIR "/lumen_cidrs", BPF_F_NO_PREALLOC);

/* Compiled NetworkPolicy, pinned: isolation markers and allow entries by (slot, direction, subject,
 * peer, proto, port prefix). Per-packet cost does not depend on the number of rules. */
BPF_TABLE_PINNED("lpm_trie", struct policy_key, struct policy_value, lumen_policy, LUMEN_POLICY_MAP_SIZE,
                 LUMEN_PIN_DIR "/lumen_policy", BPF_F_NO_PREALLOC);

/* The counters below are keyed by what they count, never read from flow entries: the LRU may evict a
 * flow at any time and its packets must stay counted. Arrays (lookups inlined by the JIT) on the
 * per-packet path; a hash only where a flow is decided. */

/* Counter slots, pinned. Key: u32 slot (1 .. LUMEN_POD_SLOTS-1). Value: u32 endpoint id of its pod.
 * Claimed by the plugin at ADD with BPF_NOEXIST (the one atomic claim bpf(2) offers), deleted at DEL;
 * the programs never read it. */
BPF_TABLE_PINNED("hash", u32, u32, lumen_slots, LUMEN_POD_SLOTS, LUMEN_PIN_DIR "/lumen_slots");

/* Endpoint generation, pinned. Key: u32 0. Value: u32, bumped by the plugin after every change to
 * lumen_endpoints (read, then write the read value + 1, after the change: concurrent bumps may merge,
 * never hide a change). A flow entry resolves its endpoints and slots again when it differs. */
BPF_TABLE_PINNED("array", u32, u32, lumen_endpoint_gen, 1, LUMEN_PIN_DIR "/lumen_endpoint_gen");

/* Per-pod counters, pinned. Key: u32 slot. Value: struct pod_counters, one per CPU. */
BPF_TABLE_PINNED("percpu_array", u32, struct pod_counters, lumen_pods, LUMEN_POD_SLOTS,
                 LUMEN_PIN_DIR "/lumen_pods");

/* Pod-to-pod bytes, pinned. Key: u32 src_slot * LUMEN_POD_SLOTS + dst_slot. Value: struct pair_counters
 * (shared by CPUs, atomic adds: per CPU it would cost LUMEN_POD_SLOTS^2 x 32 bytes per CPU). */
BPF_TABLE_PINNED("array", u32, struct pair_counters, lumen_pairs, LUMEN_POD_SLOTS * LUMEN_POD_SLOTS,
                 LUMEN_PIN_DIR "/lumen_pairs");

/* Flows created, pinned. Key: u32 proto << 3 | verdict << 1 | (direction - 1) (lumen_flow_count_index).
 * Value: u64 per CPU. The verdict is the one decided on the flow's first packet. */
BPF_TABLE_PINNED("percpu_array", u32, u64, lumen_flow_counts, 256 << 3, LUMEN_PIN_DIR "/lumen_flow_counts");

/* Dropped packets, pinned. Key: u32 drop reason << 8 | proto. Value: u64 per CPU. */
BPF_TABLE_PINNED("percpu_array", u32, u64, lumen_drops, LUMEN_DROP_MAX << 8, LUMEN_PIN_DIR "/lumen_drops");

/* Policy decisions, pinned: a flow's first decision and each later one that changed a side's verdict or
 * policy. Key: struct policy_count_key. Value: u64 flows per CPU. */
BPF_TABLE_PINNED("percpu_hash", struct policy_count_key, u64, lumen_policy_counts, LUMEN_POLICY_COUNT_SIZE,
                 LUMEN_PIN_DIR "/lumen_policy_counts");

/* TCP packets with SYN, FIN or RST, pinned. Key: u32 (family == 6) << 8 | TCP flag byte. Value: u64
 * per CPU. Data packets (none of these flags) cost one test. */
BPF_TABLE_PINNED("percpu_array", u32, u64, lumen_tcp_flags, 2 << 8, LUMEN_PIN_DIR "/lumen_tcp_flags");

/* Datapath counters, pinned. Key: u32 enum lumen_stat. Value: u64 per CPU. */
BPF_TABLE_PINNED("percpu_array", u32, u64, lumen_stats, LUMEN_STAT_MAX, LUMEN_PIN_DIR "/lumen_stats");

/* Runtime configuration, pinned. Key: u32 0. Value: struct lumen_config. */
BPF_TABLE_PINNED("array", u32, struct lumen_config, lumen_config, 1, LUMEN_PIN_DIR "/lumen_config");

/* Wake-up batching: events since the last forced wake-up. Key: u32 0. Value: u64 per CPU. */
BPF_PERCPU_ARRAY(lumen_batch, u64, 1);

/* Flow events to the agent. Not pinned: each agent start makes a new one and re-attaches programs. */
BPF_RINGBUF_OUTPUT(lumen_events, LUMEN_RINGBUF_PAGES);

#endif
