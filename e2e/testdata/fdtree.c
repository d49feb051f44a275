/* fdtree: a parent and a child sharing an eventfd, a signalfd and an
 * epoll set (made by the parent before the fork, so each is one open file
 * description held by both).
 *
 * The epoll set watches the eventfd. The parent, on SIGUSR1, adds its
 * generation number to the eventfd; the child waits on the epoll set and
 * reads the eventfd: "child eventfd=V". Both block SIGUSR2 and read the
 * shared signalfd (which gives each its own pending signals) every tick:
 * "parent signalfd signo=S" / "child signalfd signo=S".
 *
 * Lines: "ready pid=P child=C", then the parent's
 * "tick N" every 20 ms. */
#include "common.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/wait.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

static void read_signals(int sfd, const char *who)
{
	struct signalfd_siginfo si;
	while (read(sfd, &si, sizeof si) == sizeof si)
		say("%s signalfd signo=%u", who, si.ssi_signo);
}

int main(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	if (sigprocmask(SIG_BLOCK, &set, NULL))
		die("sigprocmask");
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (efd < 0 || sfd < 0 || ep < 0)
		die("eventfd/signalfd/epoll");
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0xe7e7};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev))
		die("epoll_ctl");

	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		for (;;) {
			struct epoll_event got;
			int n = epoll_wait(ep, &got, 1, 20);
			if (n < 0 && errno != EINTR)
				die("epoll_wait");
			if (n == 1) {
				if (got.data.u64 != 0xe7e7)
					die("epoll data");
				uint64_t v;
				if (read(efd, &v, sizeof v) == sizeof v)
					say("child eventfd=%llu", (unsigned long long)v);
			}
			read_signals(sfd, "child");
		}
	}
	signal(SIGUSR1, on_usr1);
	say("ready pid=%d child=%d", getpid(), child);
	for (unsigned long tick = 1, gen = 0;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			uint64_t v = ++gen;
			if (write(efd, &v, sizeof v) != sizeof v)
				die("write eventfd");
		}
		read_signals(sfd, "parent");
		int st;
		if (waitpid(child, &st, WNOHANG) == child)
			die("the child ended");
		say("tick %lu", tick);
		msleep(20);
	}
}
