/* sock_pair: unix sockets connected inside the process, with unread data.
 *
 *   sock_pair DIR
 *
 * Holds: a stream socketpair with unread bytes both ways; a stream pair
 * whose one end wrote then shut its sending side; a seqpacket pair and a
 * datagram pair with queued messages; a stream socket whose peer wrote
 * and closed; a datagram socket bound to DIR/dgram.sock with two queued
 * datagrams from a socket connected to it; an abstract listener with an
 * accepted connection holding unread bytes.
 *
 * Lines: "ready pid=P", "tick N"; on SIGUSR1 "check ..." with each part
 * "ok" or what went wrong. The check reads every queue, then uses every
 * socket again. */
#include "common.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

static char result[4096];

static void fail(const char *part, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	snprintf(result + strlen(result), sizeof result - strlen(result), " %s=FAIL(%s)", part, buf);
}

/* expect reads one message (or what a stream has) without blocking and
 * compares it with want; want NULL means end of file. */
static int expect(const char *part, int fd, const char *want)
{
	char buf[256];
	ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
	if (n < 0) {
		fail(part, "read: %s, want %s", strerror(errno), want ? want : "EOF");
		return 0;
	}
	buf[n] = 0;
	if (!want) {
		if (n != 0) {
			fail(part, "read %s, want EOF", buf);
			return 0;
		}
		return 1;
	}
	if (strcmp(buf, want) != 0) {
		fail(part, "read '%s', want '%s'", buf, want);
		return 0;
	}
	return 1;
}

static int put(const char *part, int fd, const char *s)
{
	if (send(fd, s, strlen(s), MSG_NOSIGNAL) != (ssize_t)strlen(s)) {
		fail(part, "send %s: %s", s, strerror(errno));
		return 0;
	}
	return 1;
}

static void ok(const char *part, int good)
{
	if (good)
		snprintf(result + strlen(result), sizeof result - strlen(result), " %s=ok", part);
}

static void wait_readable(int fd)
{
	for (int i = 0; i < 200; i++) {
		char c;
		if (recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) >= 0)
			return;
		msleep(5);
	}
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	int s1[2], s2[2], s3[2], s4[2], s5[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s1) || socketpair(AF_UNIX, SOCK_STREAM, 0, s2) ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, s3) ||
	    socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, s4) || socketpair(AF_UNIX, SOCK_STREAM, 0, s5))
		die("socketpair");
	if (!put("init", s1[0], "a-to-b") || !put("init", s1[1], "b-to-a"))
		die("send");
	if (!put("init", s2[0], "last words") || shutdown(s2[0], SHUT_WR))
		die("half");
	if (!put("init", s3[0], "m1") || !put("init", s3[0], "m22") || !put("init", s3[0], "m333"))
		die("seqpacket");
	if (!put("init", s4[1], "d1") || !put("init", s4[1], "d2"))
		die("dgram");
	if (!put("init", s5[1], "bye"))
		die("gone");
	close(s5[1]);

	struct sockaddr_un dg = {.sun_family = AF_UNIX};
	snprintf(dg.sun_path, sizeof dg.sun_path, "%s/dgram.sock", argv[1]);
	int k = socket(AF_UNIX, SOCK_DGRAM, 0), l = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (k < 0 || l < 0 || bind(k, (struct sockaddr *)&dg, sizeof dg) || chmod(dg.sun_path, 0620) ||
	    connect(l, (struct sockaddr *)&dg, sizeof dg))
		die("named dgram");
	if (!put("init", l, "q1") || !put("init", l, "q2"))
		die("send q");

	struct sockaddr_un ab = {.sun_family = AF_UNIX};
	int ablen = 1 + snprintf(ab.sun_path + 1, sizeof ab.sun_path - 1, "migrate-sock-pair-%d", getpid());
	socklen_t abaddr = offsetof(struct sockaddr_un, sun_path) + ablen;
	int ls = socket(AF_UNIX, SOCK_STREAM, 0), m = socket(AF_UNIX, SOCK_STREAM, 0);
	if (ls < 0 || m < 0 || bind(ls, (struct sockaddr *)&ab, abaddr) || listen(ls, 4) ||
	    connect(m, (struct sockaddr *)&ab, abaddr))
		die("abstract listener");
	int n = accept(ls, NULL, NULL);
	if (n < 0 || !put("init", m, "via-listener"))
		die("accept");

	signal(SIGUSR1, on_usr1);
	say("ready pid=%d", getpid());
	for (unsigned long tick = 1;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			result[0] = 0;
			ok("pair", expect("pair", s1[1], "a-to-b") && expect("pair", s1[0], "b-to-a") &&
				       put("pair", s1[0], "ping") && expect("pair", s1[1], "ping") &&
				       put("pair", s1[1], "pong") && expect("pair", s1[0], "pong"));
			ok("half", expect("half", s2[1], "last words") && expect("half", s2[1], NULL) &&
				       put("half", s2[1], "reply") && expect("half", s2[0], "reply"));
			ok("seqpacket", expect("seqpacket", s3[1], "m1") && expect("seqpacket", s3[1], "m22") &&
					    expect("seqpacket", s3[1], "m333") && put("seqpacket", s3[1], "x") &&
					    expect("seqpacket", s3[0], "x"));
			int fl = fcntl(s4[0], F_GETFL);
			ok("dgram", expect("dgram", s4[0], "d1") && expect("dgram", s4[0], "d2") &&
					    put("dgram", s4[0], "d3") && expect("dgram", s4[1], "d3") &&
					    (fl & O_NONBLOCK ? 1 : (fail("dgram", "O_NONBLOCK lost"), 0)));
			ok("gone", expect("gone", s5[0], "bye") && expect("gone", s5[0], NULL));
			struct stat st;
			int mode = stat(dg.sun_path, &st) == 0 ? (int)(st.st_mode & 07777) : -1;
			ok("named", expect("named", k, "q1") && expect("named", k, "q2") && put("named", l, "q3") &&
					    expect("named", k, "q3") &&
					    (mode == 0620 ? 1 : (fail("named", "mode %o", mode), 0)));
			int c = socket(AF_UNIX, SOCK_STREAM, 0), a = -1;
			int lok = expect("listener", n, "via-listener") && put("listener", n, "back") &&
				  expect("listener", m, "back");
			if (lok && connect(c, (struct sockaddr *)&ab, abaddr) == 0 && (a = accept(ls, NULL, NULL)) >= 0) {
				lok = put("listener", c, "new") && (wait_readable(a), expect("listener", a, "new"));
			} else if (lok) {
				fail("listener", "connect/accept: %s", strerror(errno));
				lok = 0;
			}
			ok("listener", lok);
			close(c);
			if (a >= 0)
				close(a);
			say("check%s", result);
		}
		say("tick %lu", tick);
		msleep(20);
	}
}
