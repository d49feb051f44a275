/* sysv: a parent and its child that share System V shared memory.
 *
 *   sysv KEY
 *
 * Segment A (key KEY, 100000 bytes, mode 0640) is attached read-write, its
 * second page made read-only by mprotect; segment B (private, 8192 bytes)
 * is filled through a first attachment, then attached read-only; segment
 * C (private, 4096 bytes) is attached and marked removed (IPC_RMID). Then
 * a child is forked: it echoes the counter the parent writes at offset 0
 * of A into offset 8192 of A. The parent logs "ready pid=P child=C a=ID
 * b=ID c=ID", then "tick N ok" (or "stale": no echo within a second), and
 * on SIGUSR1 "sums X" of A's read-only page, B and C. SIGTERM: it kills the
 * child and exits. */
#include "common.h"
#include <sys/shm.h>
#include <sys/wait.h>

static volatile sig_atomic_t got_usr1, got_term;
static void on_usr1(int s) { (void)s; got_usr1 = 1; }
static void on_term(int s) { (void)s; got_term = 1; }

static uint32_t sum(const volatile unsigned char *p, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	key_t key = (key_t)strtol(argv[1], NULL, 0);
	int a = shmget(key, 100000, IPC_CREAT | IPC_EXCL | 0640);
	int b = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
	int c = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
	if (a < 0 || b < 0 || c < 0)
		die("shmget");
	volatile unsigned char *pa = shmat(a, NULL, 0);
	unsigned char *pb = shmat(b, NULL, 0);
	volatile unsigned char *pc = shmat(c, NULL, 0);
	if (pa == (void *)-1 || pb == (void *)-1 || pc == (void *)-1)
		die("shmat");
	for (int i = 0; i < 4096; i++) {
		pa[4096 + i] = (unsigned char)(i * 7);
		pc[i] = (unsigned char)(i * 13);
	}
	for (int i = 0; i < 8192; i++)
		pb[i] = (unsigned char)(i * 3 + 1);
	if (shmdt(pb))
		die("shmdt");
	volatile unsigned char *rb = shmat(b, NULL, SHM_RDONLY);
	if (rb == (void *)-1)
		die("shmat ro");
	if (mprotect((void *)(pa + 4096), 4096, PROT_READ))
		die("mprotect");
	if (shmctl(c, IPC_RMID, NULL))
		die("IPC_RMID");
	volatile int64_t *req = (volatile int64_t *)pa, *ans = (volatile int64_t *)(pa + 8192);
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		for (;;) {
			int64_t r = *req;
			if (*ans != r)
				*ans = r;
			struct timespec ts = {0, 1000 * 1000};
			nanosleep(&ts, NULL);
		}
	}
	signal(SIGUSR1, on_usr1);
	signal(SIGTERM, on_term);
	say("ready pid=%d child=%d a=%d b=%d c=%d", getpid(), child, a, b, c);
	for (int64_t i = 1; !got_term; i++) {
		*req = i;
		int ok = 0;
		for (int w = 0; w < 1000 && !got_term; w++) {
			if (*ans == i) {
				ok = 1;
				break;
			}
			struct timespec ts = {0, 1000 * 1000};
			nanosleep(&ts, NULL);
		}
		if (got_usr1) {
			got_usr1 = 0;
			say("sums %08x %08x %08x", sum(pa + 4096, 4096), sum(rb, 8192), sum(pc, 4096));
		}
		say("tick %lld %s", (long long)i, ok ? "ok" : "stale");
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	shmctl(a, IPC_RMID, NULL);
	shmctl(b, IPC_RMID, NULL);
	say("bye");
	return 0;
}
