/* growsdown: an area mapped MAP_GROWSDOWN, which grows when the page just
 * below it is touched.
 *
 *   growsdown TRIGGER
 *
 * Logs "ready addr=A" (hex, the area's start) and "tick N"; once the file
 * TRIGGER exists, writes to the page below A and logs "grew" (a fault it
 * could not take would kill it with SIGSEGV). */
#include "common.h"

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
	say("ready addr=%lx", (unsigned long)p);
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
