/* epollsig: a process that waits for signals the way PostgreSQL (15+)
 * waits on its latch: SIGUSR1 blocked, a signalfd for it, and an epoll set
 * that watches the signalfd, waited on without a timeout.
 *
 * Lines: "ready", then "woke signo=S" for each signal read. */
#include "common.h"
#include <sys/epoll.h>
#include <sys/signalfd.h>

int main(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &set, NULL))
		die("sigprocmask");
	int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (sfd < 0 || ep < 0)
		die("signalfd/epoll");
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x5f5f};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev))
		die("epoll_ctl");
	say("ready");
	for (;;) {
		struct epoll_event got;
		int n = epoll_wait(ep, &got, 1, -1);
		if (n < 0 && errno != EINTR)
			die("epoll_wait");
		if (n != 1)
			continue;
		if (got.data.u64 != 0x5f5f)
			die("epoll data");
		struct signalfd_siginfo si;
		while (read(sfd, &si, sizeof si) == sizeof si)
			say("woke signo=%u", si.ssi_signo);
	}
}
