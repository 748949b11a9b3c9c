// fwd's XDP program: steer VIP traffic to the AF_XDP socket of its queue, pass everything else.
//
// Only frames whose IP destination is in `vips` go to userspace (after up to two VLAN tags);
// ARP, ND (even when addressed to a VIP), BGP, SSH, health-check replies and any other traffic
// for the box itself stay with the kernel, so the interface keeps working as a normal interface
// while fwd runs. A VIP frame arriving on a queue without a socket in
// `xsks` is passed too (bpf_redirect_map's fallback) and counted apart, so a misconfigured queue
// shows up in the counters instead of silently black-holing traffic.
//
// A traffic sink sets SETTING_CAPTURE_ALL_IP in `settings`: then every IPv4/IPv6 frame (ND still
// excepted) goes to the socket whatever its destination, and `vips` is not consulted. With
// SETTING_COUNT_AND_DROP as well, those frames are counted and dropped here instead: a sink that
// only needs to know how many frames arrived (a benchmark's generator at full load, whose sink
// would otherwise take from its core a share that grows with what the device under test forwards).
//
// Keys are 16 bytes: IPv6 as is, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), the encoding of
// fwd_dataplane::flow::ip_to_16. The layout of the maps and counters is mirrored in
// src/program.rs; change both together.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_VIPS 4096
#define MAX_QUEUES 1024
// 802.1Q and 802.1ad (QinQ): at most two tags, the most a provider edge hands over.
#define MAX_VLAN_TAGS 2
// ICMPv6 neighbour discovery types (RFC 4861): router solicitation .. redirect.
#define ND_ROUTER_SOLICIT 133
#define ND_REDIRECT 137

// Bits of settings[0].
#define SETTING_CAPTURE_ALL_IP 1
#define SETTING_COUNT_AND_DROP 2

enum counter {
	COUNTER_REDIRECTED = 0,    // VIP frame handed to the queue's socket
	COUNTER_PASSED = 1,        // not for a VIP: to the kernel
	COUNTER_VIP_NO_SOCKET = 2, // VIP frame on a queue without a socket: to the kernel
	COUNTER_COUNTED_AND_DROPPED = 3, // captured with SETTING_COUNT_AND_DROP
	COUNTER_COUNT = 4,
};

struct vip_key {
	__u8 addr[16];
};

struct vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, __u32); // flags, reserved (0)
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &index);
	if (value)
		*value += 1; // per-CPU slot: no other CPU writes it
}

SEC("xdp")
int fwd_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct vip_key key = {};
	void *cursor;
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		goto pass;
	proto = eth->h_proto;
	cursor = eth + 1;

#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		struct vlan_hdr *vlan = cursor;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vlan + 1) > data_end)
			goto pass;
		proto = vlan->encapsulated_proto;
		cursor = vlan + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cursor;

		if ((void *)(ip + 1) > data_end)
			goto pass;
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], &ip->daddr, 4);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cursor;

		if ((void *)(ip6 + 1) > data_end)
			goto pass;
		// Neighbour discovery stays with the kernel even when addressed to a VIP (a router
		// probing an on-link VIP): only the first next header is looked at, which is where
		// ND messages carry ICMPv6.
		if (ip6->nexthdr == IPPROTO_ICMPV6) {
			__u8 *icmp6_type = (void *)(ip6 + 1);

			if ((void *)(icmp6_type + 1) > data_end)
				goto pass;
			if (*icmp6_type >= ND_ROUTER_SOLICIT && *icmp6_type <= ND_REDIRECT)
				goto pass;
		}
		__builtin_memcpy(key.addr, &ip6->daddr, 16);
	} else {
		goto pass;
	}

	__u32 settings_key = 0;
	__u32 *flags = bpf_map_lookup_elem(&settings, &settings_key);
	int capture_all = flags && (*flags & SETTING_CAPTURE_ALL_IP);

	if (!capture_all && !bpf_map_lookup_elem(&vips, &key))
		goto pass;
	if (capture_all && (*flags & SETTING_COUNT_AND_DROP)) {
		count(COUNTER_COUNTED_AND_DROPPED);
		return XDP_DROP;
	}

	long action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	count(action == XDP_REDIRECT ? COUNTER_REDIRECTED : COUNTER_VIP_NO_SOCKET);
	return action;

pass:
	count(COUNTER_PASSED);
	return XDP_PASS;
}

// No GPL-only helper is used, so the project's own licence will do.
char _license[] SEC("license") = "Apache-2.0";
