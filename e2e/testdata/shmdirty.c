/* shmdirty: a parent and a child that keep rewriting pages of one shared
 * anonymous region (MAP_SHARED|MAP_ANONYMOUS, made before the fork), so
 * that a live migration of the tree has pages of one memory written
 * through two processes while its rounds go: the parent writes the even
 * pages, the child the odd ones, each at about R/2 MB/s. Every page holds
 * a pattern made of its index and a generation number kept in a table in
 * the same shared region. On SIGUSR1 each process checks the pages it
 * writes against the table and reports "verify WHO ok PAGES" or "verify
 * WHO bad PAGE" (WHO: parent or child), so the memory the tree shares is
 * proven exact after a migration.
 *
 * The parent reports "ready pid=P child=C" once every page is written,
 * then "tick N" each 100 ms. The child dies with its parent.
 *
 * usage: shmdirty MIB MB_PER_SEC */
#include "common.h"
#include <sys/prctl.h>

static volatile sig_atomic_t verify;
static void on_usr1(int sig) { (void)sig; verify = 1; }

static uint64_t pattern(uint64_t page, uint64_t gen, uint64_t word)
{
	uint64_t x = (page + 1) * 0x9e3779b97f4a7c15ull ^ (gen + 1) * 0xbf58476d1ce4e5b9ull ^ word;
	x ^= x >> 31;
	return x * 0x94d049bb133111ebull;
}

static void fill_page(uint64_t *p, uint64_t page, uint64_t gen)
{
	for (uint64_t w = 0; w < 512; w++)
		p[w] = pattern(page, gen, w);
}

/* run writes the pages i with i % 2 == odd, at rate pages a second, for
 * ever; tick lines if talk. */
static void run(uint64_t *mem, uint32_t *gen, uint64_t pages, int odd, double rate, int talk)
{
	const char *who = odd ? "child" : "parent";
	uint64_t rng = odd ? 88172645463325252ull : 2463534242ull;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int tick = 0;; tick++) {
		uint64_t n = (uint64_t)(rate / 10);
		for (uint64_t k = 0; k < n; k++) {
			rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
			uint64_t p = (rng % (pages / 2)) * 2 + odd;
			gen[p]++;
			fill_page(mem + p * 512, p, gen[p]);
		}
		if (verify) {
			verify = 0;
			uint64_t bad = pages;
			for (uint64_t i = odd; i < pages && bad == pages; i += 2)
				for (uint64_t w = 0; w < 512; w++)
					if (mem[i * 512 + w] != pattern(i, gen[i], w)) {
						bad = i;
						break;
					}
			if (bad == pages)
				say("verify %s ok %llu", who, (unsigned long long)pages);
			else
				say("verify %s bad %llu", who, (unsigned long long)bad);
		}
		if (talk)
			say("tick %d", tick);
		struct timespec next = t0;
		long long ns = (long long)(tick + 1) * 100000000ll;
		next.tv_sec += ns / 1000000000ll;
		next.tv_nsec += ns % 1000000000ll;
		if (next.tv_nsec >= 1000000000l)
			next.tv_sec++, next.tv_nsec -= 1000000000l;
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
			;
	}
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		say("usage: shmdirty MIB MB_PER_SEC");
		return 2;
	}
	uint64_t pages = (uint64_t)atol(argv[1]) * 256;
	double rate = atof(argv[2]) * 1e6 / 4096 / 2; /* pages a second, each */
	size_t len = pages * 4096 + ((pages * sizeof(uint32_t) + 4095) & ~4095ull);
	uint64_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || pages < 2) {
		say("no memory");
		return 1;
	}
	uint32_t *gen = (uint32_t *)(mem + pages * 512);
	for (uint64_t i = 0; i < pages; i++)
		fill_page(mem + i * 512, i, 0);
	signal(SIGUSR1, on_usr1);
	pid_t parent = getpid();
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		run(mem, gen, pages, 1, rate, 0);
	}
	say("ready pid=%d child=%d", getpid(), child);
	run(mem, gen, pages, 0, rate, 1);
	return 0;
}
