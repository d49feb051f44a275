/* treechurn: a process tree that changes shape all the time, each process
 * checking its own memory: a live migration must take the tree as it is
 * when it is frozen, each process with its own memory.
 *
 *   treechurn PAUSE_MS
 *
 * The root forks a short-lived child every PAUSE_MS ms (0: as fast as it
 * can, waiting only when MAXSHORT of them run), logs "forked C", and
 * reaps the children that exit ("reaped C status=S", S as wait(2) gives
 * it). A short-lived child writes a heap buffer of its own and the
 * root's buffer it inherited (copy on write), checking both before each
 * rewrite, a few times 1 ms apart, then logs "done pid=C gen=G ok" and
 * exits with status C & 0x7f. On SIGUSR2 the root forks a keeper
 * ("keeper C"), a child that does the same for ever, logging "alive
 * pid=C gen=G" every 25 rewrites. Any process that finds its memory not
 * as it wrote it logs "corrupt pid=P gen=G" and exits 100. The root
 * checks and rewrites its buffer, and logs "tick N", every 20 ms. Every
 * child dies with the root (PR_SET_PDEATHSIG). */
#include "common.h"
#include <sys/prctl.h>
#include <sys/wait.h>

#define BUF (128 << 10)
#define MAXSHORT 4
#define MAXKEEP 8

static char shared_buf[BUF]; /* the root's; copied on write in children */
static uint64_t root_gen;
static volatile sig_atomic_t got_usr2;
static void on_usr2(int sig) { (void)sig; got_usr2 = 1; }

static uint64_t seed(pid_t pid, uint64_t gen) { return (uint64_t)pid << 32 ^ gen; }

/* check says whether buf holds the pattern of seed s. */
static int check(const char *buf, uint64_t s)
{
	static char want[BUF];
	fill(want, BUF, s);
	return memcmp(buf, want, BUF) == 0;
}

static void corrupt(uint64_t gen)
{
	say("corrupt pid=%d gen=%llu", getpid(), (unsigned long long)gen);
	_exit(100);
}

/* child runs a child: rewrites and checks its memory, for ever if keep,
 * else a few times. */
static void child(int keep)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	pid_t me = getpid(), root = getppid();
	if (!check(shared_buf, seed(root, root_gen)))
		corrupt(root_gen); /* what it inherited */
	char *own = malloc(BUF);
	if (!own)
		die("malloc");
	uint64_t gen = 0;
	fill(own, BUF, seed(me, gen) + 1);
	fill(shared_buf, BUF, seed(me, gen));
	int rounds = 3 + me % 8;
	for (int i = 1; keep || i <= rounds; i++) {
		msleep(keep ? 2 : 1);
		if (!check(shared_buf, seed(me, gen)) || !check(own, seed(me, gen) + 1))
			corrupt(gen);
		gen++;
		fill(own, BUF, seed(me, gen) + 1);
		fill(shared_buf, BUF, seed(me, gen));
		if (keep && i % 25 == 0)
			say("alive pid=%d gen=%llu", me, (unsigned long long)gen);
	}
	say("done pid=%d gen=%llu ok", me, (unsigned long long)gen);
	_exit(me & 0x7f);
}

static void reap(int block, int *nshort, const pid_t *keepers, int nkeep)
{
	for (;;) {
		int st;
		pid_t c = waitpid(-1, &st, block ? 0 : WNOHANG);
		if (c <= 0)
			return;
		block = 0;
		int kept = 0;
		for (int i = 0; i < nkeep; i++)
			kept |= keepers[i] == c;
		if (!kept)
			(*nshort)--;
		say("reaped %d status=%d", c, st);
	}
}

int main(int argc, char **argv)
{
	long pause_ms = argc > 1 ? atol(argv[1]) : 2;
	pid_t me = getpid();
	pid_t keepers[MAXKEEP];
	int nkeep = 0, nshort = 0;
	signal(SIGUSR2, on_usr2);
	fill(shared_buf, BUF, seed(me, root_gen));
	struct timespec last;
	clock_gettime(CLOCK_MONOTONIC, &last);
	say("ready pid=%d", me);
	for (unsigned long tick = 1;;) {
		reap(pause_ms == 0 && nshort >= MAXSHORT, &nshort, keepers, nkeep);
		if (got_usr2 && nkeep < MAXKEEP) {
			got_usr2 = 0;
			pid_t c = fork();
			if (c < 0)
				die("fork");
			if (c == 0)
				child(1);
			keepers[nkeep++] = c;
			say("keeper %d", c);
		}
		if (nshort < MAXSHORT) {
			pid_t c = fork();
			if (c < 0)
				die("fork");
			if (c == 0)
				child(0);
			nshort++;
			say("forked %d", c);
		}
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((now.tv_sec - last.tv_sec) * 1000 + (now.tv_nsec - last.tv_nsec) / 1000000 >= 20) {
			last = now;
			if (!check(shared_buf, seed(me, root_gen)))
				corrupt(root_gen);
			root_gen++;
			fill(shared_buf, BUF, seed(me, root_gen));
			say("tick %lu", tick++);
		}
		if (pause_ms > 0)
			msleep(pause_ms);
	}
}
