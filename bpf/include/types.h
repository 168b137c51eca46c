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
    LUMEN_STAT_MAX = 8,
};

struct flow_key {
    __u8 saddr[16];    /* IPv4 in the first 4 bytes, rest zero */
    __u8 daddr[16];
    __u16 sport;       /* host byte order; ICMP: type */
    __u16 dport;       /* host byte order; ICMP: code */
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
    __u8 pad[5];
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
};

/* Endpoint map: a local pod, by one of its addresses. Written by the plugin at ADD. */
struct endpoint_key {
    __u8 addr[16];        /* IPv4 in the first 4 bytes */
    __u8 family;          /* 4 or 6 */
    __u8 pad[3];
};

struct endpoint_info {
    __u32 ifindex;        /* host veth: bpf_redirect_peer target */
    __u32 endpoint_id;
    __u8 mac[6];          /* the pod interface's MAC, written on redirect */
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
    __u32 pad;
};

#endif
