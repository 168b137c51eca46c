/* Lumen TC programs, attached (clsact, direct-action) to each pod's host veth.
 *
 * Logic:
 *  1. Parse Ethernet/VLAN/IP/L4 into a flow key; ARP and non-IP pass untouched (they cross the bridge).
 *  2. Account each flow once, where it enters the node's pod network: at the source pod's host veth
 *     (tc ingress, direction EGRESS). At the destination's host veth (tc egress, direction INGRESS) only
 *     traffic whose source is not a local pod is accounted (host, gateway, other nodes), so a pod-to-pod
 *     flow counts once whether or not the bridge is bypassed. A packet accounted at tc ingress carries
 *     a mark in skb->tc_index across the bridge, so tc egress passes it without parsing.
 *  3. Update the flow table (LRU) and the counters keyed by what they count, which an eviction cannot
 *     take: per pod (per-CPU array by the pod's slot), pod to pod, flows, drops, policy decisions, and
 *     per source address for sources that are not local pods. An established flow costs one hash lookup
 *     (its entry, which caches both ends' slots and the redirect target) and reads the clock once per
 *     kernel tick.
 *  4. Emit ring-buffer events by aggregation level: NEW on a flow's first packet, END on FIN/RST,
 *     REPORT every report interval of an active flow, PACKET per packet at level "none". A failed
 *     reserve is counted (LUMEN_STAT_LOST_EVENTS), never silent. The consumer is woken every
 *     wakeup_batch events only (BPF_RB_NO_WAKEUP otherwise); it also polls on a timer.
 *  5. NetworkPolicy, compiled by the agent into maps keyed by identity: decided on a flow's first
 *     packet and again on its first packet after a policy change, then kept in the flow entry; the
 *     answer of an admitted connection (its reverse flow exists) is admitted. Both the source's
 *     egress and a local destination's ingress are decided where the packet enters (the source's
 *     veth), because redirected packets never reach the destination's veth. DROPPED packets are shot;
 *     AUDIT ones (audit mode) pass.
 *  6. Direct forwarding: at tc ingress, a packet for a local pod goes straight into that pod with
 *     bpf_redirect_peer (destination MAC rewritten to the pod's), skipping the bridge.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "types.h"
#include "maps.h"
#include "parse.h"

#define LUMEN_TCP_FIN 0x01
#define LUMEN_TCP_SYN 0x02
#define LUMEN_TCP_RST 0x04

/* skb->tc_index of a packet accounted at a source pod's veth. A direct-action program sets it through
 * skb->tc_classid (the kernel copies its low 16 bits into tc_index when the program returns TC_ACT_OK);
 * the bridge leaves it alone, and every later tc hook overwrites it. It names the veth it was set on,
 * which the bridge keeps as skb->ingress_ifindex, so a tc_index some other tc filter left (its classid)
 * is taken for the mark only if it also names the device the packet came in on; the top bit keeps it
 * clear of the common small values (0 when no filter ran). */
static __always_inline __u32 lumen_tc_mark(__u32 ifindex)
{
    return 0x8000 | (ifindex & 0x7fff);
}

static __always_inline void lumen_stat_add(__u32 idx, __u64 n)
{
    __u64 *v = lumen_stats.lookup(&idx);
    if (v)
        *v += n;
}

static __always_inline void lumen_emit(struct lumen_config *cfg, struct flow_key *key, struct flow_stats *st,
                                       __u8 type, __u32 ifindex, __u64 now)
{
    struct flow_event *ev = lumen_events.ringbuf_reserve(sizeof(struct flow_event));
    if (!ev) {
        lumen_stat_add(LUMEN_STAT_LOST_EVENTS, 1);
        return;
    }
    __builtin_memcpy(&ev->key, key, sizeof(*key));
    ev->ts_ns = bpf_ktime_get_ns(); /* `now` may be the coarse clock; an event must not predate its flow */
    ev->first_seen_ns = st->first_seen_ns;
    ev->last_seen_ns = st->last_seen_ns;
    ev->packets = st->packets;
    ev->bytes = st->bytes;
    ev->payload_bytes = st->payload_bytes;
    ev->src_ep = st->src_ep;
    ev->dst_ep = st->dst_ep;
    ev->ifindex = ifindex;
    ev->type = type;
    ev->tcp_flags = st->tcp_flags;
    ev->verdict = st->verdict;
    ev->drop_reason = st->drop_reason;
    ev->egress_policy = st->egress_policy;
    ev->ingress_policy = st->ingress_policy;
    ev->flags = st->flags;

    __u64 flags = BPF_RB_NO_WAKEUP;
    __u32 zero = 0;
    __u64 *batch = lumen_batch.lookup(&zero);
    if (batch) {
        *batch += 1;
        if (cfg->wakeup_batch <= 1 || *batch >= cfg->wakeup_batch) {
            *batch = 0;
            flags = BPF_RB_FORCE_WAKEUP;
        }
    }
    lumen_events.ringbuf_submit(ev, flags);
    lumen_stat_add(LUMEN_STAT_EVENTS, 1);
}

static __always_inline struct endpoint_info *lumen_endpoint(__u8 *addr, __u8 family)
{
    struct endpoint_key ek = {};
    __builtin_memcpy(ek.addr, addr, 16);
    ek.family = family;
    return lumen_endpoints.lookup(&ek);
}

/* Identity of an address that is not a local pod: the node, another node's pod, or the world. */
static __always_inline __u32 lumen_remote_identity(__u8 *addr, __u8 family)
{
    struct endpoint_key ek = {};
    __builtin_memcpy(ek.addr, addr, 16);
    ek.family = family;
    __u32 *id = lumen_ipcache.lookup(&ek);
    return id ? *id : LUMEN_ID_WORLD;
}

static __always_inline __u32 lumen_cidr_identity(__u8 slot, __u8 *addr, __u8 family)
{
    struct cidr_key ck = {};
    ck.prefixlen = 32 + (family == 4 ? 32 : 128);
    ck.slot = slot;
    ck.family = family;
    __builtin_memcpy(ck.addr, addr, 16);
    __u32 *id = lumen_cidrs.lookup(&ck);
    return id ? *id : 0;
}

static __always_inline struct policy_value *lumen_policy_lookup(__u8 slot, __u8 direction, __u32 subject,
                                                               __u32 peer, __u8 proto, __u16 port)
{
    struct policy_key pk = {};
    pk.prefixlen = 128;
    pk.slot = slot;
    pk.direction = direction;
    pk.subject = subject;
    pk.peer = peer;
    pk.proto = proto;
    pk.port = bpf_htons(port);
    return lumen_policy.lookup(&pk);
}

struct lumen_peer {
    __u32 id;     /* label or reserved identity */
    __u8 *addr;   /* its address: the CIDR identity is looked up only if the label did not decide */
    __u8 family;
};

/* An allow entry: its policy becomes the one that admitted this side. */
static __always_inline int lumen_admits(struct policy_value *v, __u32 *policy)
{
    if (!v || v->kind != LUMEN_POLICY_ALLOW)
        return 0;
    *policy = v->policy_id;
    return 1;
}

/* One side of a connection: may `subject` (0: not a local pod) send (egress) or receive (ingress)?
 * At most four lookups, cheapest first: the isolation marker matches any key of the subject, so a miss
 * on the first means the pod is not isolated in this direction. A denied side leaves the isolating
 * policy (the marker's) in `isolation`, for the decision counters. */
static __always_inline int lumen_side(__u8 slot, __u8 direction, __u32 subject, struct lumen_peer *peer,
                                      __u8 proto, __u16 port, __u32 *policy, __u32 *isolation, __u8 *audit)
{
    *policy = 0;
    if (!subject || peer->id == LUMEN_ID_HOST)
        return 1;
    struct policy_value *v = lumen_policy_lookup(slot, direction, subject, peer->id, proto, port);
    if (!v)
        return 1;
    if (lumen_admits(v, policy))
        return 1;
    *audit = v->audit;
    *isolation = v->policy_id;
    if (lumen_admits(lumen_policy_lookup(slot, direction, subject, LUMEN_ID_ANY, proto, port), policy))
        return 1;
    /* last, as it costs two lookups: the address's ipBlock prefix, then its entry */
    __u32 cidr = lumen_cidr_identity(slot, peer->addr, peer->family);
    if (cidr && lumen_admits(lumen_policy_lookup(slot, direction, subject, cidr, proto, port), policy))
        return 1;
    *policy = LUMEN_POLICY_DENIED_ID;
    return 0;
}

struct lumen_decision {
    __u32 egress_policy;
    __u32 ingress_policy;
    __u32 egress_isolation;  /* the policy isolating a denied side */
    __u32 ingress_isolation;
    __u8 verdict;
    __u8 drop_reason;
    __u8 flags;
};

/* The flow this packet answers, if it was seen: same addresses and ports swapped, accounted where its
 * first packet entered the pod network (the source pod's veth if local, else the destination's). */
static __always_inline struct flow_stats *lumen_reverse(struct flow_key *key, int dst_local)
{
    struct flow_key rk = {};
    __builtin_memcpy(rk.saddr, key->daddr, 16);
    __builtin_memcpy(rk.daddr, key->saddr, 16);
    rk.sport = key->dport;
    rk.dport = key->sport;
    rk.proto = key->proto;
    rk.family = key->family;
    rk.direction = dst_local ? LUMEN_DIR_EGRESS : LUMEN_DIR_INGRESS;
    if (key->proto == IPPROTO_ICMP || key->proto == IPPROTO_ICMPV6) {
        /* an echo reply answers the echo request with its identifier; other ICMP has no connection */
        __u8 type = key->dport >> 8;
        if (key->proto == IPPROTO_ICMP && type == LUMEN_ICMP_ECHO_REPLY)
            rk.dport = LUMEN_ICMP_ECHO_REQUEST << 8;
        else if (key->proto == IPPROTO_ICMPV6 && type == LUMEN_ICMP6_ECHO_REPLY)
            rk.dport = LUMEN_ICMP6_ECHO_REQUEST << 8;
        else
            return 0;
        rk.sport = key->sport;
    }
    return lumen_flows.lookup(&rk);
}

/* NetworkPolicy for a flow's first packet (or its first after a policy change): the source's egress
 * if it is a local pod, the destination's ingress if it is one, both from the maps in force. */
static __always_inline void lumen_decide(struct lumen_config *cfg, struct flow_key *key, __u8 direction,
                                         struct endpoint_info *dst, struct flow_stats *st,
                                         struct lumen_decision *d)
{
    d->verdict = LUMEN_VERDICT_FORWARDED;
    d->drop_reason = LUMEN_DROP_NONE;
    /* IPv6's ARP: neighbour and router discovery, MLD. Policy governs IP traffic between endpoints;
     * without these an isolated pod would lose its IPv6 neighbours (ARP, non-IP, is never decided). */
    __u8 t6 = key->dport >> 8;
    if (key->proto == IPPROTO_ICMPV6 &&
        ((t6 >= LUMEN_ICMP6_MLD_QUERY && t6 <= LUMEN_ICMP6_REDIRECT) || t6 == LUMEN_ICMP6_MLD2_REPORT))
        return;
    __u8 slot = cfg->policy_slot & 1;
    struct lumen_peer src = {}, dstp = {};
    __u32 src_subject = 0, dst_subject = 0;
    if (direction == LUMEN_DIR_EGRESS) {
        struct endpoint_info *se = lumen_endpoint(key->saddr, key->family);
        src_subject = se ? se->identity : LUMEN_ID_UNMANAGED;
        src.id = src_subject ? src_subject : LUMEN_ID_UNMANAGED;
    } else {
        src.id = lumen_remote_identity(key->saddr, key->family);
    }
    if (dst) {
        dst_subject = dst->identity;
        dstp.id = dst_subject ? dst_subject : LUMEN_ID_UNMANAGED;
    } else {
        dstp.id = lumen_remote_identity(key->daddr, key->family);
    }
    src.addr = key->saddr;
    src.family = key->family;
    dstp.addr = key->daddr;
    dstp.family = key->family;
    __u16 port = 0;
    if (key->proto == IPPROTO_TCP || key->proto == IPPROTO_UDP || key->proto == IPPROTO_SCTP)
        port = key->dport;

    __u8 audit_e = 0, audit_i = 0;
    int ok_e = lumen_side(slot, LUMEN_DIR_EGRESS, src_subject, &dstp, key->proto, port, &d->egress_policy,
                          &d->egress_isolation, &audit_e);
    int ok_i = lumen_side(slot, LUMEN_DIR_INGRESS, dst_subject, &src, key->proto, port, &d->ingress_policy,
                          &d->ingress_isolation, &audit_i);
    /* A flow is a reply if its reverse was there first; decided again later, it stays what it was
     * (the original direction of a connection never passes as the reply of its own answer). */
    struct flow_stats *rev = 0;
    if (!st || (st->flags & LUMEN_FLOW_REPLY))
        rev = lumen_reverse(key, dst != 0);
    if (rev)
        d->flags |= LUMEN_FLOW_REPLY;
    if (ok_e && ok_i)
        return;
    if (rev && rev->verdict != LUMEN_VERDICT_DROPPED) {
        /* the answer of an admitted connection: admitted by the policies that admitted it */
        d->egress_policy = rev->egress_policy;
        d->ingress_policy = rev->ingress_policy;
        return;
    }
    if (cfg->audit || ((ok_e || audit_e) && (ok_i || audit_i))) {
        d->verdict = LUMEN_VERDICT_AUDIT;
        return;
    }
    d->verdict = LUMEN_VERDICT_DROPPED;
    d->drop_reason = LUMEN_DROP_POLICY_DENIED;
}

/* The redirect target cached in a flow entry. Why it cannot send a packet to the wrong pod: it is
 * resolved again on the first packet after any change to lumen_endpoints (the plugin bumps
 * lumen_endpoint_gen after writing them), so a deleted pod's address given to a new pod is sent to the
 * new pod; a packet that read the generation just before the bump can only reach the deleted pod's
 * veth, which the kernel never hands to another device (ifindexes are allocated cyclically). */
static __always_inline void lumen_set_fwd(struct flow_stats *st, struct endpoint_info *dst)
{
    if (dst) {
        __builtin_memcpy(st->fwd_mac, dst->mac, 6);
        st->fwd_ifindex = dst->ifindex;
    } else {
        st->fwd_ifindex = 0;
    }
}

/* The counter slot of the pod behind host veth `ifindex` (0: none). */
static __always_inline __u16 lumen_veth_slot(__u32 ifindex)
{
    struct endpoint_key ek = {};
    __builtin_memcpy(ek.addr, &ifindex, 4);
    ek.family = LUMEN_EP_BY_IFINDEX;
    struct endpoint_info *ep = lumen_endpoints.lookup(&ek);
    return ep ? ep->slot : 0;
}

static __always_inline void lumen_set_dst(struct flow_stats *st, struct endpoint_info *dst)
{
    st->dst_ep = dst ? dst->endpoint_id : 0;
    st->dst_slot = dst ? dst->slot : 0;
}

static __always_inline void lumen_count_decision(__u32 policy_id, __u32 isolation, __u8 verdict, __u8 side)
{
    if (!policy_id)
        return; /* this side is not isolated */
    struct policy_count_key k = {};
    k.policy_id = policy_id;
    if (policy_id == LUMEN_POLICY_DENIED_ID) {
        k.policy_id = isolation; /* named by the policy whose default deny it is */
        k.denied = 1;
    }
    k.verdict = verdict;
    k.direction = side;
    __u64 *v = lumen_policy_counts.lookup(&k);
    if (v) {
        *v += 1;
    } else {
        __u64 one = 1;
        lumen_policy_counts.update(&k, &one);
    }
}

/* Per-packet counters keyed by what they count (3.): the flow entry may be evicted at any time. */
static __always_inline void lumen_count(struct flow_key *key, __u16 src_slot, __u16 dst_slot, __u8 verdict,
                                        __u8 drop_reason, __u64 len)
{
    struct pod_counters *src = 0, *dst = 0;
    __u32 slot = src_slot;
    if (slot)
        src = lumen_pods.lookup(&slot);
    if (src) {
        src->tx_packets += 1;
        src->tx_bytes += len;
    } else {
        /* a source that is not a local pod with a slot: by address */
        struct endpoint_key sk = {};
        __builtin_memcpy(sk.addr, key->saddr, 16);
        sk.family = key->family;
        struct source_counters *sc = lumen_sources.lookup(&sk);
        if (sc) {
            sc->packets += 1;
            sc->bytes += len;
        } else {
            struct source_counters init = {.packets = 1, .bytes = len};
            if (lumen_sources.update(&sk, &init) != 0) {
                lumen_stat_add(LUMEN_STAT_SOURCES_FULL_PACKETS, 1);
                lumen_stat_add(LUMEN_STAT_SOURCES_FULL_BYTES, len);
            }
        }
    }
    slot = dst_slot;
    if (slot)
        dst = lumen_pods.lookup(&slot);
    if (dst && verdict != LUMEN_VERDICT_DROPPED) {
        dst->rx_packets += 1;
        dst->rx_bytes += len;
    }
    if (src && dst) {
        __u32 pair = (__u32)src_slot * LUMEN_POD_SLOTS + dst_slot;
        struct pair_counters *pc = lumen_pairs.lookup(&pair);
        if (pc)
            __sync_fetch_and_add(&pc->bytes[verdict & 3], len);
    }
    if (verdict == LUMEN_VERDICT_DROPPED) {
        __u32 idx = (__u32)drop_reason << 8 | key->proto;
        __u64 *v = lumen_drops.lookup(&idx);
        if (v)
            *v += 1;
    }
}

static __always_inline int lumen_handle(struct __sk_buff *skb, __u8 direction)
{
    /* 2. Bridged from a pod's veth, where it was accounted: the cheapest exit (~60 ns less than the
     * endpoint lookup below, on every pod-to-pod packet when the bridge is not bypassed). */
    if (direction == LUMEN_DIR_INGRESS && skb->tc_index == lumen_tc_mark(skb->ingress_ifindex))
        return TC_ACT_OK;
    __u32 zero = 0;
    struct lumen_config *cfg = lumen_config.lookup(&zero);
    if (!cfg)
        return TC_ACT_OK;

    /* 1. No bpf_skb_pull_data: on a cloned TCP skb it copies the head, hundreds of ns per packet.
     * Headers of locally built packets are linear; an IP packet whose are not is counted, not parsed. */
    struct flow_key key = {};
    __u8 tcp_flags = 0;
    int payload_off = lumen_parse(skb, &key, &tcp_flags);
    if (payload_off < 0) {
        if (payload_off == LUMEN_PARSE_TRUNCATED)
            lumen_stat_add(LUMEN_STAT_UNPARSED, 1);
        return TC_ACT_OK;
    }
    key.direction = direction;

    /* 2. At tc ingress the source is the pod behind this veth, whose endpoint id is this ifindex
     * (the plugin uses the host veth ifindex as endpoint id): no lookup needed. */
    __u32 src_ep = 0;
    if (direction == LUMEN_DIR_EGRESS) {
        src_ep = skb->ifindex;
        skb->tc_classid = lumen_tc_mark(skb->ifindex);
    }
    int want_redirect = direction == LUMEN_DIR_EGRESS && cfg->redirect;

    __u64 len = skb->len;
    __u64 payload = len > (__u64)payload_off ? len - payload_off : 0;
    /* what a flow entry's resolved endpoints depend on: the endpoint generation and direct forwarding */
    __u32 *gen_p = lumen_endpoint_gen.lookup(&zero);
    __u32 ep_gen = ((gen_p ? *gen_p : 0) & 0x7fffffff) | (want_redirect ? 0x80000000 : 0);

    /* 3. On this VM a clock helper costs ~30 ns and a hash lookup 35-60 ns: an established flow costs
     * one hash lookup (its entry). It reads the coarse clock once per tick (jiffies, inlined by the
     * verifier), not once per packet; the coarse clock only moves at ticks anyway. A flow's first packet
     * and its end take the precise clock. Its endpoints (ids, counter slots, redirect target) are
     * resolved for a new flow, a policy change and after any change to lumen_endpoints (the endpoint
     * generation), so a packet is never counted for, or sent to, a pod that no longer has its address. */
    __u32 tick = (__u32)bpf_jiffies64();
    struct endpoint_info *dst = 0;
    __u32 fwd_ifindex = 0;
    __u8 *fwd_mac = 0;
    __u64 now;
    __u8 ev_type = 0;
    __u8 verdict;
    __u8 drop_reason;
    __u16 src_slot = 0, dst_slot = 0;
    struct flow_stats *st = lumen_flows.lookup(&key);
    /* 2. At tc egress, a local pod's packet was accounted (and policy decided) at its own veth; the mark
     * lets most of them by, this catches those whose mark was lost on the way. Asked for a new flow, and
     * for an established one only after the endpoints changed (the source may be a local pod's address
     * now): an established packet from another node or the host costs one hash lookup, as at ingress. */
    if (direction == LUMEN_DIR_INGRESS && (!st || st->ep_gen != ep_gen) &&
        lumen_endpoint(key.saddr, key.family))
        return TC_ACT_OK;
    if (st) {
        __sync_fetch_and_add(&st->packets, 1);
        __sync_fetch_and_add(&st->bytes, len);
        __sync_fetch_and_add(&st->payload_bytes, payload);
        st->tcp_flags |= tcp_flags;
        if (st->ep_gen != ep_gen || st->src_ep != src_ep) {
            /* a pod came or went (its address may be another pod's now), or this flow's source address
             * moved to another veth: both ends again */
            dst = lumen_endpoint(key.daddr, key.family);
            lumen_set_dst(st, dst);
            lumen_set_fwd(st, want_redirect ? dst : 0);
            if (st->src_ep != src_ep) {
                st->src_ep = src_ep;
                st->src_slot = src_ep ? lumen_veth_slot(src_ep) : 0;
            }
            st->ep_gen = ep_gen; /* last: another CPU reads the fresh ends, or resolves them too */
        }
        if (st->tick != tick) {
            now = bpf_ktime_get_coarse_ns();
            if (now > st->last_seen_ns)
                st->last_seen_ns = now;
            st->tick = tick;
        }
        now = st->last_seen_ns;
        if (st->policy_gen != cfg->policy_gen) {
            /* policies changed since this flow was decided: decide again, now, on this packet */
            if (!dst)
                dst = lumen_endpoint(key.daddr, key.family);
            struct lumen_decision d = {};
            lumen_decide(cfg, &key, direction, dst, st, &d);
            __u8 was = st->verdict;
            if (d.verdict != was || d.egress_policy != st->egress_policy)
                lumen_count_decision(d.egress_policy, d.egress_isolation, d.verdict, LUMEN_DIR_EGRESS);
            if (d.verdict != was || d.ingress_policy != st->ingress_policy)
                lumen_count_decision(d.ingress_policy, d.ingress_isolation, d.verdict, LUMEN_DIR_INGRESS);
            st->policy_gen = cfg->policy_gen;
            st->verdict = d.verdict;
            st->drop_reason = d.drop_reason;
            st->egress_policy = d.egress_policy;
            st->ingress_policy = d.ingress_policy;
            st->flags |= d.flags;
            lumen_set_dst(st, dst);
            lumen_set_fwd(st, want_redirect ? dst : 0);
            if (was != d.verdict) {
                st->last_report_ns = now;
                ev_type = d.verdict == LUMEN_VERDICT_DROPPED ? LUMEN_EV_DROP : LUMEN_EV_REPORT;
            }
        }
        verdict = st->verdict;
        drop_reason = st->drop_reason;
        fwd_ifindex = st->fwd_ifindex;
        fwd_mac = st->fwd_mac;
        src_slot = st->src_slot;
        dst_slot = st->dst_slot;
        if (!ev_type && (tcp_flags & (LUMEN_TCP_FIN | LUMEN_TCP_RST))) {
            st->last_seen_ns = bpf_ktime_get_ns(); /* a flow's end gets the precise clock too */
            ev_type = LUMEN_EV_END;
        } else if (!ev_type && now > st->last_report_ns && now - st->last_report_ns >= cfg->report_interval_ns) {
            st->last_report_ns = now;
            ev_type = LUMEN_EV_REPORT;
        }
    } else {
        now = bpf_ktime_get_ns();
        dst = lumen_endpoint(key.daddr, key.family);
        struct lumen_decision d = {};
        lumen_decide(cfg, &key, direction, dst, 0, &d);
        verdict = d.verdict;
        drop_reason = d.drop_reason;
        struct flow_stats init = {};
        init.packets = 1;
        init.bytes = len;
        init.payload_bytes = payload;
        init.first_seen_ns = now;
        init.last_seen_ns = now;
        init.last_report_ns = now;
        init.src_ep = src_ep;
        lumen_set_dst(&init, dst);
        src_slot = src_ep ? lumen_veth_slot(src_ep) : 0;
        dst_slot = init.dst_slot;
        init.src_slot = src_slot;
        init.ep_gen = ep_gen;
        init.tcp_flags = tcp_flags;
        init.verdict = d.verdict;
        init.drop_reason = d.drop_reason;
        init.flags = d.flags;
        init.policy_gen = cfg->policy_gen;
        init.egress_policy = d.egress_policy;
        init.ingress_policy = d.ingress_policy;
        init.tick = tick;
        if (want_redirect && dst) {
            lumen_set_fwd(&init, dst);
            fwd_ifindex = dst->ifindex;
            fwd_mac = dst->mac;
        }
        if (lumen_flows.update(&key, &init) != 0) {
            lumen_stat_add(LUMEN_STAT_FLOW_INSERT_FAILED, 1);
        } else {
            lumen_stat_add(LUMEN_STAT_FLOWS_CREATED, 1);
            __u32 fc = (__u32)key.proto << 3 | (d.verdict & 3) << 1 | ((direction - 1) & 1);
            __u64 *n = lumen_flow_counts.lookup(&fc);
            if (n)
                *n += 1;
            lumen_count_decision(d.egress_policy, d.egress_isolation, d.verdict, LUMEN_DIR_EGRESS);
            lumen_count_decision(d.ingress_policy, d.ingress_isolation, d.verdict, LUMEN_DIR_INGRESS);
            st = lumen_flows.lookup(&key);
            ev_type = d.verdict == LUMEN_VERDICT_DROPPED ? LUMEN_EV_DROP : LUMEN_EV_NEW;
        }
    }

    lumen_count(&key, src_slot, dst_slot, verdict, drop_reason, len);
    if (tcp_flags & (LUMEN_TCP_SYN | LUMEN_TCP_FIN | LUMEN_TCP_RST)) {
        __u32 fi = (__u32)(key.family == 6) << 8 | tcp_flags;
        __u64 *n = lumen_tcp_flags.lookup(&fi);
        if (n)
            *n += 1;
    }

    /* 4. */
    if (st) {
        if (cfg->aggregation == LUMEN_AGG_NONE)
            ev_type = LUMEN_EV_PACKET;
        if (ev_type)
            lumen_emit(cfg, &key, st, ev_type, skb->ifindex, now);
    }
    if (verdict == LUMEN_VERDICT_DROPPED) {
        lumen_stat_add(LUMEN_STAT_POLICY_DROPPED, 1);
        return TC_ACT_SHOT;
    }
    if (verdict == LUMEN_VERDICT_AUDIT)
        lumen_stat_add(LUMEN_STAT_POLICY_AUDIT, 1);

    /* 6. */
    if (want_redirect && fwd_ifindex && fwd_mac && fwd_ifindex != skb->ifindex) {
        void *data = (void *)(long)skb->data;
        struct ethhdr *eth = data;
        if ((void *)(eth + 1) > (void *)(long)skb->data_end)
            return TC_ACT_OK;
        /* Same subnet: the pod already addressed the peer's MAC. Writing anyway would unclone every
         * TCP skb (a copy per packet), so only a routed packet (gateway MAC) is rewritten. */
        __u8 differs = 0;
#pragma unroll
        for (int i = 0; i < 6; i++)
            differs |= eth->h_dest[i] ^ fwd_mac[i];
        if (differs) {
            __u8 mac[6];
            __builtin_memcpy(mac, fwd_mac, 6);
            bpf_skb_store_bytes(skb, 0, mac, 6, 0);
        }
        lumen_stat_add(LUMEN_STAT_REDIRECTED, 1);
        return bpf_redirect_peer(fwd_ifindex, 0);
    }
    return TC_ACT_OK;
}

int lumen_ingress(struct __sk_buff *skb)
{
    return lumen_handle(skb, LUMEN_DIR_EGRESS);
}

int lumen_egress(struct __sk_buff *skb)
{
    return lumen_handle(skb, LUMEN_DIR_INGRESS);
}
