/* growsdown: an area mapped MAP_GROWSDOWN, which grows when the page just
 * below it is touched, and an area mapped read-write with MAP_NORESERVE,
 * twice the size of RAM and swap (more than the heuristic overcommit lets a
 * mapping without it have), one page touched.
 *
 *   growsdown TRIGGER
 *
 * Logs "ready addr=A nr=N" (hex, the areas' starts) and "tick N"; once the file
 * TRIGGER exists, writes to the page below A and logs "grew" (a fault it
 * could not take would kill it with SIGSEGV). */
#include "common.h"
#include <sys/sysinfo.h>

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	long pg = sysconf(_SC_PAGESIZE);
	/* Room below it, for the area to grow into. */
	char *hole = mmap(NULL, 64 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (hole == MAP_FAILED)
		die("mmap");
	munmap(hole, 64 * pg);
	char *p = mmap(hole + 60 * pg, 4 * pg, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_FIXED_NOREPLACE, -1, 0);
	if (p == MAP_FAILED)
		die("mmap growsdown");
	p[3 * pg] = 1;
	struct sysinfo si;
	if (sysinfo(&si))
		die("sysinfo");
	size_t big = ((2 * ((size_t)si.totalram + si.totalswap) * si.mem_unit) | ((1UL << 30) - 1)) + 1;
	char *nr = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (nr == MAP_FAILED)
		die("mmap noreserve");
	nr[12345] = 1;
	say("ready addr=%lx nr=%lx", (unsigned long)p, (unsigned long)nr);
	for (unsigned long tick = 1;; tick++) {
		if (access(argv[1], F_OK) == 0) {
			*(volatile char *)(p - pg / 2) = 2;
			say("grew");
			for (;;) {
				say("tick %lu", tick++);
				msleep(30);
			}
		}
		say("tick %lu", tick);
		msleep(30);
	}
}
