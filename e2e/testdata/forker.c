/* forker: a process that forks a child whenever it is told to: a process
 * tree that changes shape during a live migration, on demand.
 *
 *   forker
 *
 * "ready pid=P" first, then "tick N" every 20 ms. On SIGUSR1 it forks a
 * child that waits for its parent's death (prctl PR_SET_PDEATHSIG) and
 * logs "forked C". A child, on SIGUSR2, opens a pty master (an fd that
 * cannot move) and logs "pty C fd=N". On SIGTERM it kills its children,
 * reaps them and exits 0 with "bye". */
#include "common.h"
#include <sys/prctl.h>
#include <sys/wait.h>

static volatile sig_atomic_t got_usr1, got_usr2, got_term;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }
static void on_usr2(int sig) { (void)sig; got_usr2 = 1; }
static void on_term(int sig) { (void)sig; got_term = 1; }

/* child waits for its parent's death; on SIGUSR2 (blocked since before
 * the fork: one sent early waits) it opens a pty master. */
__attribute__((noreturn)) static void child(void)
{
	sigset_t wait;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	signal(SIGUSR2, on_usr2);
	sigprocmask(SIG_SETMASK, NULL, &wait);
	sigdelset(&wait, SIGUSR2);
	for (;;) {
		while (!got_usr2)
			sigsuspend(&wait);
		got_usr2 = 0;
		int fd = open("/dev/ptmx", O_RDWR | O_NOCTTY);
		if (fd < 0)
			die("open /dev/ptmx");
		say("pty %d fd=%d", getpid(), fd);
	}
}

int main(void)
{
	pid_t kids[64];
	int nk = 0;
	sigset_t usr2;
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	sigprocmask(SIG_BLOCK, &usr2, NULL);
	signal(SIGUSR1, on_usr1);
	signal(SIGTERM, on_term);
	say("ready pid=%d", getpid());
	for (unsigned long tick = 1;; tick++) {
		if (got_term) {
			for (int i = 0; i < nk; i++)
				kill(kids[i], SIGKILL);
			for (int i = 0; i < nk; i++)
				waitpid(kids[i], NULL, 0);
			say("bye");
			return 0;
		}
		if (got_usr1 && nk < 64) {
			got_usr1 = 0;
			pid_t c = fork();
			if (c < 0)
				die("fork");
			if (c == 0)
				child();
			kids[nk++] = c;
			say("forked %d", c);
		}
		say("tick %lu", tick);
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}
