/* dumpable: a process with a chosen PR_SET_DUMPABLE.
 *
 *   dumpable D
 *
 * Sets prctl(PR_SET_DUMPABLE, D), logs "ready pid=P", then "tick N"; on
 * SIGUSR1 logs "dumpable=N" (what PR_GET_DUMPABLE says). */
#include "common.h"
#include <sys/prctl.h>

static volatile sig_atomic_t asked;

static void on_usr1(int sig) { (void)sig; asked = 1; }

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	if (prctl(PR_SET_DUMPABLE, atoi(argv[1]), 0, 0, 0))
		die("PR_SET_DUMPABLE");
	signal(SIGUSR1, on_usr1);
	say("ready pid=%d", getpid());
	for (unsigned long tick = 1;; tick++) {
		if (asked) {
			asked = 0;
			say("dumpable=%d", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
		}
		say("tick %lu", tick);
		msleep(30);
	}
}
