/* Shared definitions for sockmesh BPF programs. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif

/* An address as the kernel shows it to IPv6 sockets: IPv4 addresses are
 * stored v4-mapped (::ffff:a.b.c.d) so one key type serves both families
 * and dual-stack sockets need no special case. */
struct addr6 {
	__u32 w[4];
};

static __always_inline void addr_from_ip4(struct addr6 *a, __u32 ip4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = ip4;
}

static __always_inline int addr_equal(const struct addr6 *a, const struct addr6 *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] &&
	       a->w[3] == b->w[3];
}
