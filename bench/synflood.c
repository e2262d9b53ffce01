// SPDX-License-Identifier: GPL-2.0
/*
 * synflood: an exact number of TCP SYNs to one address and port, as fast as
 * the kernel takes them (or at a given rate), from a raw socket with
 * sendmmsg(): batches of 64 packets per system call.
 *
 *   synflood ADDR DPORT COUNT [SPORTS [PPS]]
 *
 * Source ports cycle through SPORTS distinct values from 32768 (default: the
 * whole default ephemeral range, 28232), so a run has a known number of tag
 * sets.
 * Prints "sent=N seconds=S" when done. IPv4 only; the source address is ADDR.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define FIRST_SPORT 32768	/* the default ephemeral range: 32768-60999 */
#define EPHEMERAL_PORTS 28232

struct syn {
	struct iphdr ip;
	struct tcphdr tcp;
};

/* The Internet checksum of data (an even length), continuing from sum. */
static uint16_t checksum(const void *data, size_t len, uint32_t sum)
{
	for (size_t i = 0; i < len; i += 2) {
		uint16_t word;

		memcpy(&word, (const char *)data + i, 2);	/* no aliasing games */
		sum += word;
	}
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

static void make_syn(struct syn *s, uint32_t addr, uint16_t sport, uint16_t dport, uint32_t seq)
{
	/* the pseudo-header: source, destination, protocol, TCP length */
	uint32_t sum = 2 * ((addr & 0xffff) + (addr >> 16)) + htons(IPPROTO_TCP) +
		       htons(sizeof(s->tcp));

	memset(s, 0, sizeof(*s));
	s->ip.version = 4;
	s->ip.ihl = 5;
	s->ip.tot_len = htons(sizeof(*s));
	s->ip.ttl = 64;
	s->ip.protocol = IPPROTO_TCP;
	s->ip.saddr = s->ip.daddr = addr;	/* the kernel fills in the IP checksum */
	s->tcp.source = htons(sport);
	s->tcp.dest = htons(dport);
	s->tcp.seq = htonl(seq);
	s->tcp.doff = 5;
	s->tcp.syn = 1;
	s->tcp.window = htons(65535);
	s->tcp.check = checksum(&s->tcp, sizeof(s->tcp), sum);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct syn packets[BATCH];
	struct iovec iov[BATCH];
	struct mmsghdr msgs[BATCH];
	struct sockaddr_in dst = { .sin_family = AF_INET };
	unsigned long count, sent = 0, sports;
	double pps, start;
	uint16_t dport;
	int fd;

	if (argc < 4 || argc > 6 || inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
		fprintf(stderr, "usage: %s ADDR DPORT COUNT [SPORTS [PPS]]\n", argv[0]);
		return 2;
	}
	dport = atoi(argv[2]);
	count = strtoul(argv[3], NULL, 10);
	sports = argc > 4 ? strtoul(argv[4], NULL, 10) : EPHEMERAL_PORTS;
	pps = argc > 5 ? atof(argv[5]) : 0;
	if (!sports || sports > 65536 - FIRST_SPORT) {
		fprintf(stderr, "SPORTS must be 1..%d\n", 65536 - FIRST_SPORT);
		return 2;
	}
	fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
	if (fd < 0) {
		perror("socket(AF_INET, SOCK_RAW)");
		return 1;
	}
	for (int i = 0; i < BATCH; i++) {
		iov[i] = (struct iovec){ &packets[i], sizeof(packets[i]) };
		msgs[i] = (struct mmsghdr){ .msg_hdr = { .msg_name = &dst, .msg_namelen = sizeof(dst),
							 .msg_iov = &iov[i], .msg_iovlen = 1 } };
	}
	start = now();
	while (sent < count) {
		int n = count - sent < BATCH ? count - sent : BATCH, done;

		for (int i = 0; i < n; i++)
			make_syn(&packets[i], dst.sin_addr.s_addr,
				 FIRST_SPORT + (sent + i) % sports, dport, sent + i);
		done = sendmmsg(fd, msgs, n, 0);
		if (done < 0 && errno == EPERM)
			done = 1;	/* netfilter dropped the first on output: sent, and dropped */
		if (done < 0) {
			if (errno == ENOBUFS || errno == EINTR)
				continue;
			perror("sendmmsg");
			return 1;
		}
		sent += done;
		if (pps) {	/* pace: sleep until this many packets are due */
			double ahead = sent / pps - (now() - start);

			if (ahead > 0)
				usleep(ahead * 1e6);
		}
	}
	printf("sent=%lu seconds=%.6f\n", sent, now() - start);
	return 0;
}
