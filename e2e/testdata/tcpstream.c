/* tcpstream: numbered messages both ways over TCP connections, one thread
 * pair per connection, every message checked on arrival.
 *
 *   tcpstream server|client ADDR PORT CONNS COUNT PEER_COUNT INTERVAL_US [STALL_AT STALL_MS [RCVBUF]]
 *
 * Each side sends COUNT messages on each connection ("%015d\n", 16 bytes,
 * numbered from 0), one every INTERVAL_US, then shuts its sending half
 * (so the other side sees a half-closed connection), and reads until end
 * of file, checking that message i is i and that PEER_COUNT came. A receiver stops reading for
 * STALL_MS once it has read STALL_AT messages (its peer's send queue and
 * its own receive queue fill meanwhile); a client's RCVBUF (SO_RCVBUF, set
 * before connecting) makes its window close early. Lines on stdout:
 *   ready PORT                  (server: listening)
 *   conn I sent N / conn I recv N   (every 100 messages)
 *   done I sent=N recv=N          (a connection's both halves finished)
 *   error ...                     (and exit status 1)
 *   all done                      (every connection finished, exit 0)
 * An IPv6 ADDR (with ':') makes IPv6 sockets. */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>

static int count, peer_count, interval_us, stall_at = -1, stall_ms;

struct conn {
	int idx, fd;
	pthread_t tx, rx;
	long sent, recvd;
};

static void fail(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	say("error %s (errno %d: %s)", buf, errno, strerror(errno));
	_exit(1);
}

static void *sender(void *arg)
{
	struct conn *c = arg;
	char msg[17];
	for (int i = 0; i < count; i++) {
		snprintf(msg, sizeof msg, "%015d\n", i);
		for (int off = 0; off < 16;) {
			ssize_t w = write(c->fd, msg + off, 16 - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				fail("conn %d: write of message %d", c->idx, i);
			off += w;
		}
		c->sent = i + 1;
		if ((i + 1) % 100 == 0)
			say("conn %d sent %d", c->idx, i + 1);
		if (interval_us > 0) {
			struct timespec ts = {interval_us / 1000000, (interval_us % 1000000) * 1000};
			while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
				;
		}
	}
	if (shutdown(c->fd, SHUT_WR) < 0)
		fail("conn %d: shutdown", c->idx);
	return NULL;
}

static void *receiver(void *arg)
{
	struct conn *c = arg;
	char msg[17];
	int i = 0;
	for (;;) {
		if (i == stall_at) {
			struct timespec ts = {stall_ms / 1000, (stall_ms % 1000) * 1000000L};
			while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
				;
		}
		int off = 0;
		while (off < 16) {
			ssize_t r = read(c->fd, msg + off, 16 - off);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				fail("conn %d: read after %d messages", c->idx, i);
			if (r == 0) {
				if (off != 0)
					fail("conn %d: end of file inside message %d", c->idx, i);
				goto eof;
			}
			off += r;
		}
		msg[16] = 0;
		char want[17];
		snprintf(want, sizeof want, "%015d\n", i);
		if (memcmp(msg, want, 16) != 0) {
			msg[15] = 0;
			errno = 0;
			fail("conn %d: message %d reads %s", c->idx, i, msg);
		}
		i++;
		c->recvd = i;
		if (i % 100 == 0)
			say("conn %d recv %d", c->idx, i);
	}
eof:
	if (i != peer_count) {
		errno = 0;
		fail("conn %d: end of file after %d messages of %d", c->idx, i, peer_count);
	}
	return NULL;
}

static void sockaddr_of(const char *addr, int port, struct sockaddr_storage *ss, socklen_t *len, int *family)
{
	memset(ss, 0, sizeof *ss);
	if (strchr(addr, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		if (inet_pton(AF_INET6, addr, &s6->sin6_addr) != 1)
			fail("bad address %s", addr);
		*len = sizeof *s6;
		*family = AF_INET6;
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		if (inet_pton(AF_INET, addr, &s4->sin_addr) != 1)
			fail("bad address %s", addr);
		*len = sizeof *s4;
		*family = AF_INET;
	}
}

int main(int argc, char **argv)
{
	if (argc != 8 && argc != 10 && argc != 11) {
		fprintf(stderr, "usage: tcpstream server|client ADDR PORT CONNS COUNT PEER_COUNT INTERVAL_US [STALL_AT STALL_MS [RCVBUF]]\n");
		return 2;
	}
	int server = strcmp(argv[1], "server") == 0;
	int port = atoi(argv[3]), conns = atoi(argv[4]);
	count = atoi(argv[5]);
	peer_count = atoi(argv[6]);
	interval_us = atoi(argv[7]);
	int rcvbuf = 0;
	if (argc >= 10) {
		stall_at = atoi(argv[8]);
		stall_ms = atoi(argv[9]);
	}
	if (argc == 11)
		rcvbuf = atoi(argv[10]);
	struct sockaddr_storage ss;
	socklen_t len;
	int family;
	sockaddr_of(argv[2], port, &ss, &len, &family);
	struct conn *cs = calloc(conns, sizeof *cs);
	if (server) {
		int l = socket(family, SOCK_STREAM, 0);
		int one = 1;
		setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (l < 0 || bind(l, (struct sockaddr *)&ss, len) < 0 || listen(l, 64) < 0)
			fail("listen on %s port %d", argv[2], port);
		say("ready %d", port);
		for (int i = 0; i < conns; i++) {
			int fd = accept(l, NULL, NULL);
			if (fd < 0)
				fail("accept");
			cs[i].idx = i;
			cs[i].fd = fd;
		}
	} else {
		for (int i = 0; i < conns; i++) {
			int fd = socket(family, SOCK_STREAM, 0);
			if (fd >= 0 && rcvbuf > 0)
				setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
			if (fd < 0 || connect(fd, (struct sockaddr *)&ss, len) < 0)
				fail("connect to %s port %d", argv[2], port);
			cs[i].idx = i;
			cs[i].fd = fd;
		}
	}
	int one = 1;
	for (int i = 0; i < conns; i++) {
		setsockopt(cs[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		pthread_create(&cs[i].rx, NULL, receiver, &cs[i]);
		pthread_create(&cs[i].tx, NULL, sender, &cs[i]);
	}
	say("connected %d", conns);
	for (int i = 0; i < conns; i++) {
		pthread_join(cs[i].tx, NULL);
		pthread_join(cs[i].rx, NULL);
		say("done %d sent=%ld recv=%ld", i, cs[i].sent, cs[i].recvd);
	}
	say("all done");
	return 0;
}
