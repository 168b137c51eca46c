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
#ifndef LUMEN_RINGBUF_PAGES
#define LUMEN_RINGBUF_PAGES 256
#endif

/* Flow table, pinned. Key: struct flow_key (5-tuple + direction). Value: struct flow_stats.
 * LRU: a full table evicts the least recently used flow (LUMEN_STAT_FLOWS_CREATED shows the churn). */
BPF_TABLE_PINNED("lru_hash", struct flow_key, struct flow_stats, lumen_flows, LUMEN_FLOW_TABLE_SIZE,
                 LUMEN_PIN_DIR "/lumen_flows");

/* Per-source counters, pinned. Key: struct endpoint_key (source address). Value: struct source_counters,
 * one per CPU (no atomics on the packet path). */
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

/* Datapath counters, pinned. Key: u32 enum lumen_stat. Value: u64 per CPU. */
BPF_TABLE_PINNED("percpu_array", u32, u64, lumen_stats, LUMEN_STAT_MAX, LUMEN_PIN_DIR "/lumen_stats");

/* Runtime configuration, pinned. Key: u32 0. Value: struct lumen_config. */
BPF_TABLE_PINNED("array", u32, struct lumen_config, lumen_config, 1, LUMEN_PIN_DIR "/lumen_config");

/* Wake-up batching: events since the last forced wake-up. Key: u32 0. Value: u64 per CPU. */
BPF_PERCPU_ARRAY(lumen_batch, u64, 1);

/* Flow events to the agent. Not pinned: each agent start makes a new one and re-attaches programs. */
BPF_RINGBUF_OUTPUT(lumen_events, LUMEN_RINGBUF_PAGES);

#endif
