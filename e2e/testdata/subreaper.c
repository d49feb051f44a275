/* subreaper: a child subreaper (PR_SET_CHILD_SUBREAPER).
 *
 *   subreaper TRIGGER
 *
 * Logs "ready pid=P" and "tick N"; once the file TRIGGER exists it forks a
 * child that forks a grandchild and exits; the grandchild, orphaned, logs
 * "orphan ppid=X" (X is this process if it is still a subreaper) and
 * exits; this process reaps both. */
#include "common.h"
#include <sys/prctl.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))
		die("PR_SET_CHILD_SUBREAPER");
	say("ready pid=%d", getpid());
	for (unsigned long tick = 1;; tick++) {
		if (access(argv[1], F_OK) == 0) {
			pid_t c = fork();
			if (c < 0)
				die("fork");
			if (c == 0) {
				pid_t parent = getpid();
				pid_t g = fork();
				if (g == 0) {
					while (getppid() == parent)
						msleep(5);
					say("orphan ppid=%d", getppid());
					_exit(0);
				}
				_exit(0);
			}
			while (wait(NULL) > 0 || errno == EINTR)
				;
			say("reaped");
			for (;;) {
				say("tick %lu", tick++);
				msleep(30);
			}
		}
		say("tick %lu", tick);
		msleep(30);
	}
}
