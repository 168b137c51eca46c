/* Every struct and enum shared between the TC programs and Python (bpf/abi.py mirrors them; the drift
 * test compiles this header and compares offsets and sizes). Fixed-width fields, explicit padding. */
#ifndef LUMEN_TYPES_H
#define LUMEN_TYPES_H

/* Where a flow was seen, from the pod's point of view. */
enum lumen_direction {
    LUMEN_DIR_EGRESS = 1,  /* leaving the pod: tc ingress of its host veth */
    LUMEN_DIR_INGRESS = 2, /* entering the pod: tc egress of its host veth */
};

enum lumen_event_type {
    LUMEN_EV_NEW = 1,    /* first packet of a flow */
    LUMEN_EV_END = 2,    /* FIN or RST seen (idle ends are emitted by the agent's sweep) */
    LUMEN_EV_DROP = 3,   /* a packet was dropped */
    LUMEN_EV_REPORT = 4, /* periodic counters of an active flow */
    LUMEN_EV_PACKET = 5, /* aggregation "none": one event per packet */
};

enum lumen_verdict {
    LUMEN_VERDICT_FORWARDED = 1,
    LUMEN_VERDICT_DROPPED = 2,
    LUMEN_VERDICT_AUDIT = 3,
};

enum lumen_drop_reason {
    LUMEN_DROP_NONE = 0,
    LUMEN_DROP_POLICY_DENIED = 1,
    LUMEN_DROP_MAX = 2, /* lumen_drops holds LUMEN_DROP_MAX x 256 protocols */
};

enum lumen_aggregation {
    LUMEN_AGG_DEFAULT = 0, /* new, end, drop, periodic report */
    LUMEN_AGG_NONE = 1,    /* every packet (debugging) */
};

/* Indexes of the per-CPU stats array. */
enum lumen_stat {
    LUMEN_STAT_LOST_EVENTS = 0,       /* ring buffer reserve failed: the event is gone, counted here */
    LUMEN_STAT_EVENTS = 1,            /* events submitted */
    LUMEN_STAT_FLOW_INSERT_FAILED = 2,/* flow table update failed */
    LUMEN_STAT_FLOWS_CREATED = 3,     /* new flow entries (LRU may evict old ones to make room) */
    LUMEN_STAT_REDIRECTED = 4,        /* packets sent straight into the destination pod */
    LUMEN_STAT_UNPARSED = 5,          /* IP packets whose headers were not linear: not accounted */
    LUMEN_STAT_POLICY_DROPPED = 6,    /* packets dropped by policy */
    LUMEN_STAT_POLICY_AUDIT = 7,      /* packets policy would drop, forwarded in audit mode */
    LUMEN_STAT_SOURCES_FULL_PACKETS = 8, /* packets of a new source address with lumen_sources full */
    LUMEN_STAT_SOURCES_FULL_BYTES = 9,   /* and their bytes: other sources stay exact */
    LUMEN_STAT_MAX = 10,
};

/* ICMP and ICMPv6 message types the datapath tells apart. An echo request and its reply are one
 * connection; separate ping sessions between the same two addresses differ by the echo identifier. */
enum lumen_icmp_type {
    LUMEN_ICMP_ECHO_REPLY = 0,
    LUMEN_ICMP_ECHO_REQUEST = 8,
    LUMEN_ICMP6_ECHO_REQUEST = 128,
    LUMEN_ICMP6_ECHO_REPLY = 129,
    LUMEN_ICMP6_MLD_QUERY = 130,    /* 130-137: MLD, router and neighbour discovery, redirect */
    LUMEN_ICMP6_REDIRECT = 137,
    LUMEN_ICMP6_MLD2_REPORT = 143,
};

/* Flow flags (flow_stats.flags, flow_event.flags). */
enum lumen_flow_flag {
    LUMEN_FLOW_REPLY = 1, /* the reverse flow was seen first: this is the answer of a connection */
};

/* Identities: a number per distinct set of pod labels (namespace, labels and named ports), allocated by
 * the agent; policy maps are keyed by them. Reserved ones below LUMEN_ID_FIRST_LABEL. */
enum lumen_identity {
    LUMEN_ID_ANY = 0,             /* in a policy key: any peer */
    LUMEN_ID_HOST = 1,            /* this node's own addresses: always allowed, as Kubernetes requires */
    LUMEN_ID_WORLD = 2,           /* any address that is neither a known pod nor the node */
    LUMEN_ID_UNMANAGED = 3,       /* a local pod whose labels the agent did not know at ADD */
    LUMEN_ID_FIRST_LABEL = 256,   /* pod label sets */
    LUMEN_ID_FIRST_CIDR = 16777216,/* ipBlock prefixes */
};

/* Policy map entries (LPM trie, struct policy_key -> struct policy_value). */
enum lumen_policy_kind {
    LUMEN_POLICY_ISOLATE = 1, /* key = slot, direction, subject (prefix 64): some policy selects it */
    LUMEN_POLICY_ALLOW = 2,   /* a rule admits this peer (or any, peer 0) on proto/port prefix */
};

#define LUMEN_POLICY_DENIED_ID 0xffffffff /* flow_stats.*_policy when no rule admitted it */

struct flow_key {
    __u8 saddr[16];    /* IPv4 in the first 4 bytes, rest zero */
    __u8 daddr[16];
    __u16 sport;       /* host byte order; ICMP/ICMPv6: echo identifier (0 for other messages) */
    __u16 dport;       /* host byte order; ICMP/ICMPv6: type << 8 | code; IGMP: type << 8 */
    __u8 proto;        /* IPPROTO_* */
    __u8 family;       /* 4 or 6 */
    __u8 direction;    /* enum lumen_direction */
    __u8 pad;
};

struct flow_stats {
    __u64 packets;        /* skbs (a GSO skb carries up to 64 KB) */
    __u64 bytes;          /* skb->len at TC: Ethernet header + IP packet, bytes */
    __u64 payload_bytes;  /* L4 payload, bytes: what the application sent */
    __u64 first_seen_ns;  /* bpf_ktime_get_ns (CLOCK_MONOTONIC), ns */
    __u64 last_seen_ns;   /* ns */
    __u64 last_report_ns; /* ns */
    __u32 src_ep;         /* endpoint id (host veth ifindex) of the source pod, 0 if not local */
    __u32 dst_ep;         /* endpoint id of the destination pod, 0 if not local */
    __u8 tcp_flags;       /* OR of every TCP flag byte seen */
    __u8 verdict;         /* enum lumen_verdict */
    __u8 drop_reason;     /* enum lumen_drop_reason */
    __u8 flags;           /* enum lumen_flow_flag */
    __u32 policy_gen;     /* lumen_config.policy_gen the verdict was decided under */
    __u32 egress_policy;  /* id of the policy admitting the source's egress; 0 none isolates it;
                           * LUMEN_POLICY_DENIED_ID none admits it */
    __u32 ingress_policy; /* the same for the destination's ingress */
    /* Per-packet shortcuts (bpf/lumen.c, step 3): the clock once per kernel tick (jiffy), the ends
     * once per endpoint generation. */
    __u32 tick;           /* low 32 bits of jiffies when last_seen_ns was last refreshed */
    __u32 fwd_ifindex;    /* redirect target (destination's host veth) as of `ep_gen`; 0 none */
    __u8 fwd_mac[6];      /* the destination pod's MAC, as of `ep_gen` */
    __u16 src_slot;       /* counter slot (lumen_pods) of src_ep, 0 none */
    __u16 dst_slot;       /* counter slot of dst_ep, 0 none */
    __u16 pad;
    __u32 ep_gen;         /* lumen_endpoint_gen (low 31 bits; top bit: redirect on) when src/dst (ep, slot)
                           * and fwd_* were resolved */
};

struct flow_event {
    struct flow_key key;
    __u64 ts_ns;          /* when the event was emitted, ns */
    __u64 first_seen_ns;  /* ns */
    __u64 last_seen_ns;   /* ns */
    __u64 packets;
    __u64 bytes;          /* bytes, as in flow_stats */
    __u64 payload_bytes;  /* bytes */
    __u32 src_ep;
    __u32 dst_ep;
    __u32 ifindex;        /* host veth the packet was seen on */
    __u8 type;            /* enum lumen_event_type */
    __u8 tcp_flags;
    __u8 verdict;
    __u8 drop_reason;
    __u32 egress_policy;  /* as in flow_stats */
    __u32 ingress_policy;
    __u8 flags;           /* enum lumen_flow_flag */
    __u8 pad[7];
};

/* Endpoint map: a local pod, by each of its addresses and by its host veth (family
 * LUMEN_EP_BY_IFINDEX, the ifindex in the first 4 bytes of addr: what tc ingress knows of the sender
 * whatever source address it uses). Written by the plugin at ADD. */
#define LUMEN_EP_BY_IFINDEX 0
struct endpoint_key {
    __u8 addr[16];        /* IPv4 in the first 4 bytes */
    __u8 family;          /* 4 or 6; LUMEN_EP_BY_IFINDEX */
    __u8 pad[3];
};

struct endpoint_info {
    __u32 ifindex;        /* host veth: bpf_redirect_peer target */
    __u32 endpoint_id;    /* the host veth's ifindex too (the plugin's choice) */
    __u8 mac[6];          /* the pod interface's MAC, written on redirect */
    __u16 slot;           /* the pod's counter slot (lumen_pods, lumen_pairs); 0 none */
    __u32 identity;       /* enum lumen_identity or a label identity */
};

/* Per-pod counters, one slot per local pod (lumen_pods, per CPU). A slot is claimed in lumen_slots at
 * ADD, which writes endpoint_id and zeroes the slot's counters before the pod's endpoint entries exist;
 * DEL zeroes its pairs before freeing it: a counter never carries a previous pod's traffic. */
struct pod_counters {
    __u32 endpoint_id;    /* the pod the slot was last claimed for */
    __u32 pad;
    __u64 tx_packets;     /* every packet accounted at the pod's veth (tc ingress), any verdict */
    __u64 tx_bytes;       /* bytes, as in flow_stats */
    __u64 rx_packets;     /* packets for the pod's addresses that were not dropped */
    __u64 rx_bytes;
};

/* Pod-to-pod bytes (lumen_pairs): index src_slot * LUMEN_POD_SLOTS + dst_slot. */
struct pair_counters {
    __u64 bytes[4];       /* by enum lumen_verdict (index 0 unused) */
};

/* Flows decided by policy, per isolated side (lumen_policy_counts). */
struct policy_count_key {
    __u32 policy_id;      /* the policy that admitted this side; if `denied`, the one isolating it (its
                           * isolation marker's), 0 if unknown */
    __u8 verdict;         /* enum lumen_verdict */
    __u8 direction;       /* enum lumen_direction: the side (egress of the source, ingress of the dest) */
    __u8 denied;          /* 1: no rule admitted this side (the isolating policy's default deny) */
    __u8 pad;
};

/* ipBlock prefixes (LPM trie) -> CIDR identity; prefixlen counts slot+family+pad (32) + address bits. */
struct cidr_key {
    __u32 prefixlen;
    __u8 slot;            /* policy generation slot: 0 or 1 */
    __u8 family;          /* 4 or 6 */
    __u8 pad[2];
    __u8 addr[16];
};

/* Policy map key (LPM trie). Fields are matched in order; prefixlen 64 stops after subject (isolation
 * marker), 96 after peer (any protocol), 104 after proto (any port), 112 + n a port prefix. */
struct policy_key {
    __u32 prefixlen;
    __u8 slot;            /* policy generation slot: 0 or 1 */
    __u8 direction;       /* enum lumen_direction: egress of the source, ingress of the destination */
    __u8 pad[2];
    __u32 subject;        /* identity of the pod the policy applies to */
    __u32 peer;           /* identity of the other side (label or CIDR); LUMEN_ID_ANY for any peer */
    __u8 proto;           /* IPPROTO_* */
    __u8 pad2;
    __u16 port;           /* network byte order (prefix-matched) */
};

struct policy_value {
    __u32 policy_id;      /* the agent's number for namespace/name (an isolation marker: the first) */
    __u8 kind;            /* enum lumen_policy_kind */
    __u8 audit;           /* on an isolation marker: the subject's namespace is in audit mode */
    __u8 pad[2];
};

struct source_counters {
    __u64 packets;
    __u64 bytes;          /* bytes, as in flow_stats */
};

struct lumen_config {
    __u32 aggregation;       /* enum lumen_aggregation */
    __u32 redirect;          /* 1: bpf_redirect_peer between local pods */
    __u64 report_interval_ns;/* ns between REPORT events of one flow */
    __u32 wakeup_batch;      /* wake the consumer every N events (others BPF_RB_NO_WAKEUP) */
    __u32 policy_gen;        /* bumped on every policy change: flows decided earlier are decided again */
    __u32 policy_slot;       /* which half (0/1) of the policy and CIDR maps is in force */
    __u32 audit;             /* 1: policy drops everywhere become AUDIT verdicts (forwarded) */
};

#endif
