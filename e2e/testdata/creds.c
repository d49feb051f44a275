/* creds: process attributes that are not memory or files.
 *
 *   creds DIR
 *
 * Sets umask 027, cwd DIR, RLIMIT_NOFILE soft 200 and RLIMIT_CORE soft 0
 * (hard limits unchanged), comm "mig-comm-test", personality
 * ADDR_NO_RANDOMIZE.
 * Lines: "ready pid=P", "tick N"; on SIGUSR1 "creds umask=U cwd=C
 * nofile=S/H core=S/H comm=N pers=X" as the process sees them. */
#include "common.h"
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

static void report(void)
{
	mode_t um = umask(0);
	umask(um);
	char cwd[4096];
	if (!getcwd(cwd, sizeof cwd))
		strcpy(cwd, "?");
	struct rlimit nf, core;
	getrlimit(RLIMIT_NOFILE, &nf);
	getrlimit(RLIMIT_CORE, &core);
	char comm[17] = {0};
	prctl(PR_GET_NAME, comm);
	say("creds umask=%03o cwd=%s nofile=%llu/%llu core=%llu/%llu comm=%s pers=%x", (unsigned)um, cwd,
	    (unsigned long long)nf.rlim_cur, (unsigned long long)nf.rlim_max,
	    (unsigned long long)core.rlim_cur, (unsigned long long)core.rlim_max, comm,
	    (unsigned)personality(0xffffffff));
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	umask(027);
	if (chdir(argv[1]))
		die("chdir");
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = 200;
	if (setrlimit(RLIMIT_NOFILE, &rl))
		die("setrlimit");
	getrlimit(RLIMIT_CORE, &rl);
	rl.rlim_cur = 0;
	if (setrlimit(RLIMIT_CORE, &rl))
		die("setrlimit");
	if (prctl(PR_SET_NAME, "mig-comm-test"))
		die("prctl");
	if (personality(ADDR_NO_RANDOMIZE) < 0)
		die("personality");
	signal(SIGUSR1, on_usr1);
	say("ready pid=%d", getpid());
	report();
	for (unsigned long tick = 1;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			report();
		}
		say("tick %lu", tick);
		msleep(20);
	}
}
