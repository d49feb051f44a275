/* echoserver: a one-thread TCP server that echoes every byte back, on as
 * many connections as come.
 *
 *   echoserver ADDR PORT
 *
 * Lines: "ready PORT" (listening), "conns N" every 50 connections
 * accepted, "closed N" every 50 closed. An IPv6 ADDR (with ':') makes an
 * IPv6 socket. */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#define MAXCONNS 4000

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	int v6 = strchr(argv[1], ':') != NULL, port = atoi(argv[2]);
	int l = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
	if (l < 0)
		die("socket");
	int one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_storage ss = {0};
	socklen_t sl;
	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		if (inet_pton(AF_INET6, argv[1], &a->sin6_addr) != 1)
			die("address");
		sl = sizeof *a;
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		a->sin_family = AF_INET;
		a->sin_port = htons(port);
		if (inet_pton(AF_INET, argv[1], &a->sin_addr) != 1)
			die("address");
		sl = sizeof *a;
	}
	if (bind(l, (struct sockaddr *)&ss, sl) || listen(l, 1024))
		die("bind/listen");
	static struct pollfd pfd[MAXCONNS + 1];
	int n = 1;
	long accepted = 0, closed = 0;
	pfd[0] = (struct pollfd){.fd = l, .events = POLLIN};
	say("ready %d", port);
	for (;;) {
		if (poll(pfd, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		for (int i = n - 1; i >= 1; i--) {
			if (!pfd[i].revents)
				continue;
			char buf[4096];
			ssize_t r = read(pfd[i].fd, buf, sizeof buf);
			if (r < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			for (ssize_t off = 0; r > 0 && off < r;) {
				ssize_t w = write(pfd[i].fd, buf + off, r - off);
				if (w < 0 && errno == EINTR)
					continue;
				if (w <= 0) {
					r = -1;
					break;
				}
				off += w;
			}
			if (r <= 0) {
				close(pfd[i].fd);
				pfd[i] = pfd[--n];
				if (++closed % 50 == 0)
					say("closed %ld", closed);
			}
		}
		if (pfd[0].revents & POLLIN) {
			int c = accept(l, NULL, NULL);
			if (c < 0)
				continue;
			if (n > MAXCONNS) {
				close(c);
				continue;
			}
			pfd[n++] = (struct pollfd){.fd = c, .events = POLLIN};
			if (++accepted % 50 == 0)
				say("conns %ld", accepted);
		}
	}
}
