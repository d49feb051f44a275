/* prog_prefork: a pre-fork TCP server, as classic daemons are.
 *
 *   prog_prefork PORT
 *
 * The parent listens on 127.0.0.1:PORT and forks 3 workers that share the
 * listening socket. Each worker polls the listener and a control pipe from
 * the parent; a connection gets "worker W pid P n N\n" back, then the
 * worker closes it and reports to the parent through one report pipe that
 * all workers write into (fixed-size records, atomic). A "ping" on its
 * control pipe makes a worker report a pong.
 *
 * Parent lines: "ready pid=P workers=A,B,C", "tick N served=S" every 100
 * ms (S: connections the workers reported), "pong W gen=G" on SIGUSR1
 * (after it pinged every worker). On SIGTERM it kills its workers, reaps
 * them and exits 0 with "bye reaped=3". A worker that dies is a FAIL. */
#include "common.h"
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define NW 3

struct rec {
	int32_t worker;
	int32_t kind; /* 1 served, 2 pong */
	int64_t value;
};

static volatile sig_atomic_t got_usr1, got_term;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }
static void on_term(int sig) { (void)sig; got_term = 1; }

static void put(int fd, struct rec r)
{
	if (write(fd, &r, sizeof r) != sizeof r)
		die("write report");
}

static void worker(int w, int ls, int ctl, int rep)
{
	signal(SIGUSR1, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	long n = 0;
	for (;;) {
		struct pollfd p[2] = {{.fd = ls, .events = POLLIN}, {.fd = ctl, .events = POLLIN}};
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("worker poll");
		}
		if (p[1].revents) {
			int32_t gen;
			if (read(ctl, &gen, sizeof gen) != sizeof gen)
				die("worker read ctl");
			put(rep, (struct rec){w, 2, gen});
		}
		if (p[0].revents) {
			int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
			if (c < 0) {
				if (errno == EAGAIN || errno == EINTR)
					continue;
				die("accept");
			}
			char buf[128];
			int len = snprintf(buf, sizeof buf, "worker %d pid %d n %ld\n", w, getpid(), ++n);
			if (write(c, buf, len) != len)
				die("write conn");
			close(c);
			put(rep, (struct rec){w, 1, n});
		}
	}
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (ls < 0)
		die("socket");
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 64))
		die("bind/listen");
	int rep[2];
	if (pipe2(rep, O_CLOEXEC))
		die("pipe");
	signal(SIGUSR1, on_usr1);
	signal(SIGTERM, on_term);
	pid_t pids[NW];
	int ctl[NW];
	for (int w = 0; w < NW; w++) {
		int c[2];
		if (pipe2(c, O_CLOEXEC))
			die("pipe");
		pids[w] = fork();
		if (pids[w] < 0)
			die("fork");
		if (pids[w] == 0) {
			close(c[1]);
			close(rep[0]);
			for (int k = 0; k < w; k++)
				close(ctl[k]);
			worker(w, ls, c[0], rep[1]);
		}
		close(c[0]);
		ctl[w] = c[1];
	}
	close(rep[1]);
	say("ready pid=%d workers=%d,%d,%d", getpid(), pids[0], pids[1], pids[2]);
	long served = 0;
	int32_t gen = 0;
	int64_t last = 0;
	for (unsigned long tick = 1;;) {
		if (got_term) {
			int reaped = 0;
			for (int w = 0; w < NW; w++)
				kill(pids[w], SIGKILL);
			for (int w = 0; w < NW; w++) {
				int st;
				if (waitpid(pids[w], &st, 0) == pids[w] && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
					reaped++;
			}
			say("bye reaped=%d", reaped);
			return 0;
		}
		if (got_usr1) {
			got_usr1 = 0;
			gen++;
			for (int w = 0; w < NW; w++)
				if (write(ctl[w], &gen, sizeof gen) != sizeof gen)
					die("write ctl");
		}
		int st;
		pid_t dead = waitpid(-1, &st, WNOHANG);
		if (dead > 0) {
			say("FAIL worker %d ended with status %#x", dead, st);
			return 1;
		}
		struct pollfd p = {.fd = rep[0], .events = POLLIN};
		int n = poll(&p, 1, 20);
		if (n < 0 && errno != EINTR)
			die("poll");
		if (n > 0) {
			struct rec r;
			if (read(rep[0], &r, sizeof r) != sizeof r)
				die("read report");
			if (r.kind == 1)
				served++;
			else
				say("pong %d gen=%lld", r.worker, (long long)r.value);
		}
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		int64_t now = ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
		if (now - last >= 100) {
			last = now;
			say("tick %lu served=%ld", tick++, served);
		}
	}
}
