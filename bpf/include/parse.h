/* Packet parsing: Ethernet, one VLAN tag (802.1Q/802.1ad), IPv4, IPv6 (a hop-by-hop options header is
 * skipped, other extension headers are not), TCP, UDP, SCTP, ICMP, ICMPv6 (type, code and echo
 * identifier), IGMP (type). Fills a flow key; returns the offset of the L4 payload, or a negative
 * LUMEN_PARSE_* code. */
#ifndef LUMEN_PARSE_H
#define LUMEN_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmp.h>

#include "types.h"

#define LUMEN_PARSE_NOT_IP (-1)
#define LUMEN_PARSE_TRUNCATED (-2) /* IP, but its headers are not in the linear data */
#define LUMEN_ETH_P_8021Q 0x8100
#define LUMEN_ETH_P_8021AD 0x88A8
#define LUMEN_IPPROTO_HOPOPTS 0 /* IPv6 hop-by-hop options: one is skipped */

struct lumen_vlan_hdr {
    __be16 tci;
    __be16 proto;
};

/* Echo request or reply: the messages that carry an identifier and form a connection. */
static __always_inline int lumen_icmp_echo(__u8 proto, __u8 type)
{
    if (proto == IPPROTO_ICMP)
        return type == LUMEN_ICMP_ECHO_REQUEST || type == LUMEN_ICMP_ECHO_REPLY;
    return type == LUMEN_ICMP6_ECHO_REQUEST || type == LUMEN_ICMP6_ECHO_REPLY;
}

static __always_inline int lumen_parse(struct __sk_buff *skb, struct flow_key *key, __u8 *tcp_flags)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return LUMEN_PARSE_NOT_IP;
    __u16 proto = eth->h_proto;
    int off = sizeof(*eth);
    if (proto == bpf_htons(LUMEN_ETH_P_8021Q) || proto == bpf_htons(LUMEN_ETH_P_8021AD)) {
        struct lumen_vlan_hdr *vh = data + off;
        if ((void *)(vh + 1) > end)
            return LUMEN_PARSE_NOT_IP;
        proto = vh->proto;
        off += sizeof(*vh);
    }
    __u8 l4;
    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = data + off;
        if ((void *)(ip + 1) > end)
            return LUMEN_PARSE_TRUNCATED;
        __builtin_memcpy(key->saddr, &ip->saddr, 4);
        __builtin_memcpy(key->daddr, &ip->daddr, 4);
        key->family = 4;
        l4 = ip->protocol;
        off += ip->ihl * 4;
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = data + off;
        if ((void *)(ip6 + 1) > end)
            return LUMEN_PARSE_TRUNCATED;
        __builtin_memcpy(key->saddr, &ip6->saddr, 16);
        __builtin_memcpy(key->daddr, &ip6->daddr, 16);
        key->family = 6;
        l4 = ip6->nexthdr;
        off += sizeof(*ip6);
        if (l4 == LUMEN_IPPROTO_HOPOPTS) {
            /* MLD reports and queries carry a router-alert option: name what follows it */
            __u8 *opt = data + off;
            if ((void *)(opt + 2) > end)
                return LUMEN_PARSE_TRUNCATED;
            l4 = opt[0];
            off += ((int)opt[1] + 1) * 8;
        }
    } else {
        return LUMEN_PARSE_NOT_IP; /* ARP and other non-IP: not a flow */
    }
    key->proto = l4;
    if (l4 == IPPROTO_TCP) {
        struct tcphdr *tcp = data + off;
        if ((void *)(tcp + 1) > end)
            return off;
        key->sport = bpf_ntohs(tcp->source);
        key->dport = bpf_ntohs(tcp->dest);
        *tcp_flags = ((__u8 *)tcp)[13];
        return off + tcp->doff * 4;
    }
    if (l4 == IPPROTO_UDP) {
        struct udphdr *udp = data + off;
        if ((void *)(udp + 1) > end)
            return off;
        key->sport = bpf_ntohs(udp->source);
        key->dport = bpf_ntohs(udp->dest);
        return off + sizeof(*udp);
    }
    if (l4 == IPPROTO_SCTP) {
        __u16 *ports = data + off; /* common header: source port, destination port */
        if ((void *)(ports + 2) > end)
            return off;
        key->sport = bpf_ntohs(ports[0]);
        key->dport = bpf_ntohs(ports[1]);
        return off + 12;
    }
    if (l4 == IPPROTO_ICMP || l4 == IPPROTO_ICMPV6) {
        /* type, code, checksum, then for echo messages the identifier: the session, as a port is */
        __u8 *icmp = data + off;
        if ((void *)(icmp + 2) > end)
            return off;
        key->dport = (__u16)icmp[0] << 8 | icmp[1];
        if (lumen_icmp_echo(l4, icmp[0]) && (void *)(icmp + 6) <= end)
            key->sport = (__u16)icmp[4] << 8 | icmp[5];
        return off + 8;
    }
    if (l4 == IPPROTO_IGMP) {
        __u8 *igmp = data + off;
        if ((void *)(igmp + 1) > end)
            return off;
        key->dport = (__u16)igmp[0] << 8; /* the message type, as for ICMP (no code) */
        return off + 8;
    }
    return off;
}

#endif
