/* zombie: a parent with a SIGCHLD handler and a child it has not reaped.
 *
 *   zombie TRIGGER
 *
 * The child exits with status 7; the handler logs "chld pid=C code=K" for
 * each SIGCHLD. Once the handler ran, the parent logs "ready pid=P
 * child=C" and "tick N"; once the file TRIGGER exists it reaps the child:
 * "reaped pid=C exit=E". */
#include "common.h"
#include <sys/wait.h>

static volatile sig_atomic_t chlds;

static void on_chld(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	chlds++;
	say("chld pid=%d code=%d", si->si_pid, si->si_code);
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	struct sigaction sa = {0};
	sa.sa_sigaction = on_chld;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	if (sigaction(SIGCHLD, &sa, NULL))
		die("sigaction");
	pid_t c = fork();
	if (c < 0)
		die("fork");
	if (c == 0)
		_exit(7);
	while (!chlds)
		msleep(10);
	say("ready pid=%d child=%d", getpid(), c);
	for (unsigned long tick = 1;; tick++) {
		if (access(argv[1], F_OK) == 0) {
			int st;
			pid_t w = waitpid(c, &st, 0);
			say("reaped pid=%d exit=%d", w, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
			for (;;) {
				say("tick %lu", tick++);
				msleep(30);
			}
		}
		say("tick %lu", tick);
		msleep(30);
	}
}
