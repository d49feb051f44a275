/* forkmem: MIB MiB of memory filled with a pattern, and a fork on demand:
 * the post-copy fork test's workload.
 *
 *   forkmem MIB
 *
 * "ready" once the memory is filled, then "tick N" every 20 ms, touching a
 * page of the memory each tick. On SIGUSR1 it forks a child that pauses
 * (it does not die with its parent) and logs "forked C". */
#include "common.h"

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

int main(int argc, char **argv)
{
	if (argc != 2) {
		say("usage: forkmem MIB");
		return 2;
	}
	size_t len = (size_t)atol(argv[1]) << 20;
	unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		die("mmap");
	for (size_t i = 0; i < len; i += 8)
		*(uint64_t *)(m + i) = i * 0x9e3779b97f4a7c15ull;
	signal(SIGUSR1, on_usr1);
	say("ready");
	for (unsigned long tick = 1;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			pid_t c = fork();
			if (c < 0)
				die("fork");
			if (c == 0) {
				for (;;)
					pause();
			}
			say("forked %d", c);
		}
		m[(tick * 4096) % len] ^= 1;
		say("tick %lu", tick);
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}
