/* pdeath: a child that asked for SIGTERM when its parent dies.
 *
 *   pdeath
 *
 * The parent forks a child that sets PR_SET_PDEATHSIG to SIGTERM and logs
 * "child pid=C" then waits; the parent ticks ("tick N"). */
#include "common.h"
#include <sys/prctl.h>

int main(void)
{
	pid_t ppid = getpid();
	pid_t c = fork();
	if (c < 0)
		die("fork");
	if (c == 0) {
		if (prctl(PR_SET_PDEATHSIG, SIGTERM))
			die("prctl");
		if (getppid() != ppid)
			_exit(3);
		say("child pid=%d", getpid());
		for (;;)
			pause();
	}
	for (unsigned long tick = 1;; tick++) {
		say("tick %lu", tick);
		msleep(30);
	}
}
