/* sock_tree: a parent and its child joined by a stream and a datagram
 * socketpair, each end in one process, with unread data both ways; and a
 * listening socket both processes share (the child inherited it).
 *
 *   sock_tree
 *
 * Lines: "ready parent=P child=C", "tick N" (parent); on SIGUSR1 each
 * process reads what waits for it and logs "check ROLE got=STREAM,DGRAM";
 * on SIGUSR2 it sends "again-ROLE" on both sockets and logs "sent ROLE". */
#include "common.h"
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

static volatile sig_atomic_t got_usr1, got_usr2;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }
static void on_usr2(int sig) { (void)sig; got_usr2 = 1; }

static void get(int fd, char *buf, size_t n)
{
	ssize_t r = recv(fd, buf, n - 1, MSG_DONTWAIT);
	if (r < 0)
		snprintf(buf, n, "ERR-%d", errno);
	else
		buf[r] = 0;
}

static void run(const char *role, int s, int d, int l)
{
	for (unsigned long tick = 1;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			char a[64], b[64];
			get(s, a, sizeof a);
			get(d, b, sizeof b);
			say("check %s got=%s,%s listening=%d", role, a, b, listen(l, 5) == 0);
		}
		if (got_usr2) {
			got_usr2 = 0;
			char again[32];
			int m = snprintf(again, sizeof again, "again-%s", role);
			if (send(s, again, m, MSG_NOSIGNAL) != m || send(d, again, m, MSG_NOSIGNAL) != m)
				say("FAIL send: %s", strerror(errno));
			say("sent %s", role);
		}
		if (role[0] == 'p')
			say("tick %lu", tick);
		msleep(20);
	}
}

int main(void)
{
	int s[2], d[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) || socketpair(AF_UNIX, SOCK_DGRAM, 0, d))
		die("socketpair");
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 5))
		die("listen");
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	pid_t kid = fork();
	if (kid < 0)
		die("fork");
	if (kid == 0) {
		close(s[0]);
		close(d[0]);
		if (send(s[1], "to-parent", 9, 0) != 9 || send(d[1], "dgram-to-parent", 15, 0) != 15)
			die("send");
		run("child", s[1], d[1], l);
	}
	close(s[1]);
	close(d[1]);
	if (send(s[0], "to-child", 8, 0) != 8 || send(d[0], "dgram-to-child", 14, 0) != 14)
		die("send");
	/* Ready once the child's bytes wait here. */
	for (int i = 0; i < 500; i++) {
		char c;
		if (recv(s[0], &c, 1, MSG_PEEK | MSG_DONTWAIT) == 1 && recv(d[0], &c, 1, MSG_PEEK | MSG_DONTWAIT) == 1)
			break;
		msleep(10);
	}
	say("ready parent=%d child=%d", getpid(), kid);
	run("parent", s[0], d[0], l);
}
