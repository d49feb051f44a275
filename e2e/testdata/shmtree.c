/* shmtree: a parent and a child that talk through shared anonymous memory
 * made before the fork (MAP_SHARED|MAP_ANONYMOUS), as a pre-fork server's
 * counters and locks are.
 *
 *   shmtree
 *
 * The child doubles each request the parent writes at offset 0 into the
 * answer at offset 8 (one page in); the parent asks every 10 ms and logs
 * "tick N ok" when the answer came, "tick N stale" if it did not within a
 * second (the two no longer share the memory). "ready pid=P child=C" first.
 * On SIGTERM the parent kills the child, reaps it and exits. */
#include "common.h"
#include <sys/wait.h>

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

int main(void)
{
	volatile int64_t *m = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		die("mmap");
	volatile int64_t *req = m, *ans = m + 4096 / 8;
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		for (;;) {
			int64_t r = *req;
			if (*ans != 2 * r)
				*ans = 2 * r;
			struct timespec ts = {0, 1000 * 1000};
			nanosleep(&ts, NULL);
		}
	}
	signal(SIGTERM, on_term);
	say("ready pid=%d child=%d", getpid(), child);
	for (int64_t i = 1; !got_term; i++) {
		*req = i;
		int ok = 0;
		for (int w = 0; w < 1000 && !got_term; w++) {
			if (*ans == 2 * i) {
				ok = 1;
				break;
			}
			struct timespec ts = {0, 1000 * 1000};
			nanosleep(&ts, NULL);
		}
		say("tick %lld %s", (long long)i, ok ? "ok" : "stale");
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	say("bye");
	return 0;
}
