/* dirty: keeps writing pages of an N MiB region at about R MB/s, so that
 * pre-copy has a moving target. Every page holds a pattern made of its
 * index and a generation number kept in a separate table; on SIGUSR1 the
 * program checks every page against the table and reports
 * "verify ok PAGES" or "verify bad PAGE", so a restore is proven exact.
 * It reports "ready" once every page is written, "tick N" each 100 ms, and
 * exits by itself after LIFETIME seconds.
 *
 * With a fourth argument "churn", it also unmaps and maps again a 1 MiB
 * area every tick (alternating between two addresses, sometimes
 * leaving pages untouched), so that the layout moves under pre-copy.
 *
 * usage: dirty MIB MB_PER_SEC LIFETIME_SECONDS [churn] */
#include "common.h"

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

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 5) {
		say("usage: dirty MIB MB_PER_SEC LIFETIME [churn]");
		return 2;
	}
	int churn = argc == 5 && strcmp(argv[4], "churn") == 0;
	uint64_t *churn_mem = NULL, churn_gen = 0;
	/* Two fixed places for the churning area, far from everything else. */
	uint64_t *churn_at[2] = {(uint64_t *)0x200000000000ull, (uint64_t *)0x200000400000ull};
	uint64_t pages = (uint64_t)atol(argv[1]) * 256;
	double rate = atof(argv[2]) * 1e6 / 4096; /* pages a second */
	time_t end = time(NULL) + atol(argv[3]);
	signal(SIGUSR1, on_usr1);
	uint64_t *mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint32_t *gen = calloc(pages, sizeof *gen);
	if (mem == MAP_FAILED || !gen) {
		say("no memory");
		return 1;
	}
	for (uint64_t i = 0; i < pages; i++)
		fill_page(mem + i * 512, i, 0);
	say("ready %llu pages", (unsigned long long)pages);
	uint64_t rng = 88172645463325252ull, written = 0;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int tick = 0; time(NULL) < end; tick++) {
		/* 100 ms worth of writes, then sleep to the next tick. */
		uint64_t n = (uint64_t)(rate / 10);
		for (uint64_t k = 0; k < n; k++) {
			rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
			uint64_t p = rng % pages;
			gen[p]++;
			fill_page(mem + p * 512, p, gen[p]);
		}
		written += n;
		if (churn) {
			if (churn_mem)
				munmap(churn_mem, 1 << 20);
			churn_gen++;
			churn_mem = mmap(churn_at[churn_gen % 2], 1 << 20, PROT_READ | PROT_WRITE,
					 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (churn_mem == MAP_FAILED) {
				say("FAIL churn mmap: %s", strerror(errno));
				return 1;
			}
			/* Only even pages: odd ones stay untouched, so zero. */
			for (uint64_t i = 0; i < 256; i += 2)
				fill_page(churn_mem + i * 512, 1000000 + i, churn_gen);
		}
		if (verify) {
			verify = 0;
			uint64_t bad = pages;
			for (uint64_t i = 0; i < pages && bad == pages; i++)
				for (uint64_t w = 0; w < 512; w++)
					if (mem[i * 512 + w] != pattern(i, gen[i], w)) {
						bad = i;
						break;
					}
			for (uint64_t i = 0; churn_mem && i < 256 && bad == pages; i++)
				for (uint64_t w = 0; w < 512; w++)
					if (churn_mem[i * 512 + w] != (i % 2 ? 0 : pattern(1000000 + i, churn_gen, w))) {
						bad = pages + 1 + i;
						break;
					}
			if (bad == pages)
				say("verify ok %llu", (unsigned long long)pages);
			else
				say("verify bad %llu", (unsigned long long)bad);
		}
		say("tick %d written %llu", tick, (unsigned long long)written);
		struct timespec next = t0;
		long long ns = (long long)(tick + 1) * 100000000ll;
		next.tv_sec += ns / 1000000000ll;
		next.tv_nsec += ns % 1000000000ll;
		if (next.tv_nsec >= 1000000000l)
			next.tv_sec++, next.tv_nsec -= 1000000000l;
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
			;
	}
	say("done");
	return 0;
}
