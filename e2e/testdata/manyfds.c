/* manyfds: hundreds of fds of several kinds, at numbers up to far past 64.
 *
 *   manyfds FILE N HIGH
 *
 * Opens N fds from 3 up, in turn: a pipe (both ends), a unix socketpair
 * (both ends), FILE, /dev/null, an eventfd, leaving a closed number after
 * every 40th; then moves one /dev/null to fd HIGH, raising its own
 * RLIMIT_NOFILE above it first. An epoll fd watches every pipe's read end
 * (its data: the fd number, marked). Every fd whose number is a multiple
 * of 7 is close-on-exec.
 *
 * Lines: "ready pid=P fds=N top=T", "tick N"; on SIGUSR1 "check ok N" once
 * every pipe and socketpair carried a byte (the epoll fd saw each pipe's
 * byte, and takes an EPOLL_CTL_MOD of its read end: the registration has
 * the process's fd number), every eventfd counted and every file is the
 * one it was, or "check bad FD WHAT" for the first that is not. */
#include "common.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

enum { PIPE_R, PIPE_W, SOCK_A, SOCK_B, FILE_FD, DEVNULL, EVENT };

#define MAXFDS 8192
static int kind[MAXFDS], peer[MAXFDS];
static dev_t dev[MAXFDS];
static ino_t ino[MAXFDS];
static int used[MAXFDS];
static int ep = -1;
#define EPOLL_MARK 0x5a00000000ULL

static void note(int fd, int k, int p)
{
	if (fd >= MAXFDS)
		die("fd out of range");
	struct stat st;
	if (fstat(fd, &st))
		die("fstat");
	kind[fd] = k, peer[fd] = p, used[fd] = 1;
	dev[fd] = st.st_dev, ino[fd] = st.st_ino;
}

/* check returns NULL if fd works as its kind should, else what is wrong. */
static const char *check(int fd)
{
	struct stat st;
	if (fstat(fd, &st))
		return "closed";
	/* (Pipes, sockets and eventfds are new ones after a restore.) */
	if ((kind[fd] == FILE_FD || kind[fd] == DEVNULL) && (st.st_dev != dev[fd] || st.st_ino != ino[fd]))
		return "another file";
	char c = (char)fd, got = 0;
	uint64_t one = 1, n = 0;
	switch (kind[fd]) {
	case PIPE_W: {
		if (write(fd, &c, 1) != 1)
			return "pipe write";
		struct epoll_event ev;
		if (epoll_wait(ep, &ev, 1, 0) != 1 || ev.data.u64 != (EPOLL_MARK | (uint64_t)peer[fd]))
			return "epoll wait";
		if (read(peer[fd], &got, 1) != 1 || got != c)
			return "pipe read";
		break;
	}
	case PIPE_R: {
		struct epoll_event ev = {.events = EPOLLIN, .data.u64 = EPOLL_MARK | (uint64_t)fd};
		if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev))
			return "epoll mod";
		break;
	}
	case SOCK_A:
		if (send(fd, &c, 1, 0) != 1)
			return "socket send";
		if (recv(peer[fd], &got, 1, 0) != 1 || got != c)
			return "socket recv";
		if (send(peer[fd], &c, 1, 0) != 1 || recv(fd, &got, 1, 0) != 1 || got != c)
			return "socket back";
		break;
	case EVENT:
		if (write(fd, &one, 8) != 8 || read(fd, &n, 8) != 8 || n != 1)
			return "eventfd";
		break;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 4)
		return 2;
	int n = atoi(argv[2]), high = atoi(argv[3]);
	if (n < 1 || n + 3 >= MAXFDS || high <= n + 3 || high >= MAXFDS)
		return 2;
	struct rlimit rl = {high + 16, high + 16};
	if (setrlimit(RLIMIT_NOFILE, &rl))
		die("setrlimit");
	int opened = 0, top = 0, spacers[MAXFDS], nspacers = 0;
	for (int i = 0; opened < n; i++) {
		int p[2], fd;
		if (i % 40 == 39) {
			/* A gap in the numbers: closed once all are open. */
			if ((spacers[nspacers++] = open("/dev/null", O_RDONLY)) < 0)
				die("open /dev/null");
		}
		switch (i % 5) {
		case 0:
			if (pipe(p))
				die("pipe");
			note(p[0], PIPE_R, p[1]);
			note(p[1], PIPE_W, p[0]);
			opened += 2;
			break;
		case 1:
			if (socketpair(AF_UNIX, SOCK_STREAM, 0, p))
				die("socketpair");
			note(p[0], SOCK_A, p[1]);
			note(p[1], SOCK_B, p[0]);
			opened += 2;
			break;
		case 2:
			if ((fd = open(argv[1], O_RDWR | O_CREAT, 0600)) < 0)
				die("open");
			note(fd, FILE_FD, -1);
			opened++;
			break;
		case 3:
			if ((fd = open("/dev/null", O_RDWR)) < 0)
				die("open /dev/null");
			note(fd, DEVNULL, -1);
			opened++;
			break;
		case 4:
			if ((fd = eventfd(0, 0)) < 0)
				die("eventfd");
			note(fd, EVENT, -1);
			opened++;
			break;
		}
	}
	for (int i = 0; i < nspacers; i++)
		close(spacers[i]);
	if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
		die("epoll_create1");
	for (int i = 0; i < MAXFDS; i++) {
		if (!used[i] || kind[i] != PIPE_R)
			continue;
		struct epoll_event ev = {.events = EPOLLIN, .data.u64 = EPOLL_MARK | (uint64_t)i};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, i, &ev))
			die("epoll_ctl");
	}
	int fd = open("/dev/null", O_RDWR);
	if (fd < 0 || dup2(fd, high) != high)
		die("dup2 to HIGH");
	close(fd);
	note(high, DEVNULL, -1);
	/* Close-on-exec on some: the restore passes runs of fds with the
	 * same flag in one message each, here dozens of them. */
	for (int i = 0; i < MAXFDS; i++)
		if (used[i] && i % 7 == 0 && fcntl(i, F_SETFD, FD_CLOEXEC))
			die("F_SETFD");
	for (int i = 0; i < MAXFDS; i++)
		if (used[i])
			top = i;
	say("ready pid=%d fds=%d top=%d", getpid(), opened + 1, top);
	signal(SIGUSR1, on_usr1);
	for (unsigned long tick = 1;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			int ok = 0;
			const char *bad = NULL;
			int at = -1;
			for (int i = 0; i < MAXFDS && !bad; i++) {
				if (!used[i])
					continue;
				if ((bad = check(i)))
					at = i;
				else
					ok++;
			}
			if (bad)
				say("check bad %d %s", at, bad);
			else
				say("check ok %d", ok);
		}
		say("tick %lu", tick);
		msleep(50);
	}
}
