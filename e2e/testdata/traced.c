/* traced: a child traced by its parent, the way a debugger holds it.
 *
 * The parent forks a child that ticks; the parent attaches to it with
 * PTRACE_SEIZE and then waits, passing on any stop. It logs "traced
 * pid=CHILD" once attached. The child dies with its parent
 * (PR_SET_PDEATHSIG). */
#include "common.h"
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

int main(void)
{
	pid_t parent = getpid();
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(0);
		for (;;)
			msleep(50);
	}
	if (ptrace(PTRACE_SEIZE, child, 0, 0))
		die("PTRACE_SEIZE");
	say("traced pid=%d", child);
	for (;;) {
		int st;
		pid_t w = waitpid(child, &st, __WALL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 || WIFEXITED(st) || WIFSIGNALED(st))
			return 0;
		if (WIFSTOPPED(st)) {
			int sig = WSTOPSIG(st);
			if (sig == SIGTRAP || (st >> 16))
				sig = 0;
			ptrace(PTRACE_CONT, child, 0, sig);
		}
	}
}
