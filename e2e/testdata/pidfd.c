/* pidfd: a process that holds pidfds, as a Go 1.23+ program that started
 * a child does.
 *
 *   pidfd
 *
 * It forks a child that waits for signals, and holds a pidfd of the child
 * and a non-blocking one of itself. "ready pid=P child=C cfd=N sfd=M",
 * then "tick N" every 10 ms. On SIGUSR1 it sends SIGTERM to the child
 * through its pidfd (pidfd_send_signal), waits for the pidfd to become
 * readable (poll), reaps the child through it (waitid P_PIDFD) and logs
 * "reaped status=S self=OK" (self: pidfd_send_signal(self, 0) works). */
#include "common.h"
#include <poll.h>
#include <sys/wait.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static volatile sig_atomic_t got_usr1;
static void on_usr1(int s) { (void)s; got_usr1 = 1; }

int main(void)
{
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		for (;;)
			pause();
	}
	int cfd = syscall(SYS_pidfd_open, child, 0);
	int sfd = syscall(SYS_pidfd_open, getpid(), O_NONBLOCK);
	if (cfd < 0 || sfd < 0)
		die("pidfd_open");
	signal(SIGUSR1, on_usr1);
	say("ready pid=%d child=%d cfd=%d sfd=%d", getpid(), child, cfd, sfd);
	for (int i = 1;; i++) {
		if (got_usr1) {
			got_usr1 = 0;
			if (syscall(SYS_pidfd_send_signal, cfd, SIGTERM, NULL, 0))
				die("pidfd_send_signal");
			struct pollfd p = {.fd = cfd, .events = POLLIN};
			if (poll(&p, 1, 5000) != 1)
				die("poll");
			siginfo_t si = {0};
			if (waitid(P_PIDFD, cfd, &si, WEXITED))
				die("waitid");
			int self = syscall(SYS_pidfd_send_signal, sfd, 0, NULL, 0) == 0;
			say("reaped pid=%d signal=%d self=%s", si.si_pid, si.si_status, self ? "ok" : "fail");
		}
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
		say("tick %d", i);
	}
}
