/* mlock: memory locked in RAM.
 *
 *   mlock MODE TRIGGER
 *
 * areas    one area of 4 pages locked (mlock), one of 4 pages locked on
 *          fault (mlock2 MLOCK_ONFAULT) with one page touched, one not
 *          locked: logs "ready a=A b=B c=C" (hex addresses)
 * all      mlockall(MCL_CURRENT | MCL_FUTURE)
 * onfault  mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)
 * Then "tick N"; once the file TRIGGER exists it maps a new area of 4
 * pages and logs "new addr=X". */
#include "common.h"

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	const char *m = argv[1];
	long pg = sysconf(_SC_PAGESIZE);
	char *a = NULL, *b = NULL, *c = NULL;
	if (!strcmp(m, "areas")) {
		a = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		b = mmap(NULL, 4 * pg, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		c = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (a == MAP_FAILED || b == MAP_FAILED || c == MAP_FAILED)
			die("mmap");
		memset(a, 7, 4 * pg);
		if (mlock(a, 4 * pg))
			die("mlock");
		if (mlock2(b, 4 * pg, MLOCK_ONFAULT))
			die("mlock2");
		(void)*(volatile char *)b;
		c[0] = 1;
	} else if (!strcmp(m, "all")) {
		if (mlockall(MCL_CURRENT | MCL_FUTURE))
			die("mlockall");
	} else if (!strcmp(m, "onfault")) {
		if (mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT))
			die("mlockall");
	} else {
		return 2;
	}
	say("ready a=%lx b=%lx c=%lx", (unsigned long)a, (unsigned long)b, (unsigned long)c);
	for (unsigned long tick = 1;; tick++) {
		if (access(argv[2], F_OK) == 0) {
			char *n = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (n == MAP_FAILED)
				die("mmap new");
			say("new addr=%lx", (unsigned long)n);
			for (;;) {
				say("tick %lu", tick++);
				msleep(30);
			}
		}
		say("tick %lu", tick);
		msleep(30);
	}
}
