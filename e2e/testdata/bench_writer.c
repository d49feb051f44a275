/* bench_writer: fills N MiB of heap-like memory as bench_heap does (page
 * kinds in turn: 30% zero, 40% repetitive text, 30% random), prints
 * "ready", then rewrites random pages at R MB/s (10^6 bytes a second,
 * whole 4 KiB pages) until it is killed, or after LIFETIME seconds
 * (default 3600) as a safety net. A rewritten page keeps its kind: a
 * random page gets new random bytes, a text page the text shifted, a zero
 * page a 64-byte record at its start (an allocation in a zeroed area).
 *
 * The writes are paced in ticks of 10 ms: each tick writes its share of
 * pages, then sleeps to the next tick on CLOCK_MONOTONIC. A tick that ends
 * late (the process was stopped, or the machine is busy) does not make
 * the next ones catch up: the schedule restarts from now, so the rate
 * never exceeds R. Each second it prints "written N MB".
 *
 * Used by the migration benchmark (e2e/cmd/bench).
 *
 * usage: bench_writer MIB MB_PER_SEC [LIFETIME_SECONDS] */
#include "common.h"

static const char text[] = "the quick brown fox jumps over the lazy dog ";

static uint64_t rng = 88172645463325252ull;

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* write_page gives page p (of kind p % 10) the contents of generation gen. */
static void write_page(unsigned char *pg, uint64_t p, uint64_t gen)
{
	int kind = p % 10;
	if (kind < 3) {
		if (gen == 0) {
			memset(pg, 0, 4096);
			return;
		}
		for (int i = 0; i < 64; i += 8) {
			uint64_t x = next();
			memcpy(pg + i, &x, 8);
		}
		return;
	}
	if (kind < 7) {
		for (int i = 0; i < 4096; i++)
			pg[i] = text[(i + p + gen) % (sizeof text - 1)];
		return;
	}
	for (int i = 0; i < 4096; i += 8) {
		uint64_t x = next();
		memcpy(pg + i, &x, 8);
	}
}

static void add_ns(struct timespec *t, long long ns)
{
	ns += t->tv_nsec;
	t->tv_sec += ns / 1000000000ll;
	t->tv_nsec = ns % 1000000000ll;
}

static long long diff_ns(const struct timespec *a, const struct timespec *b)
{
	return (a->tv_sec - b->tv_sec) * 1000000000ll + (a->tv_nsec - b->tv_nsec);
}

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 4) {
		say("usage: bench_writer MIB MB_PER_SEC [LIFETIME_SECONDS]");
		return 2;
	}
	uint64_t pages = (uint64_t)atol(argv[1]) * 256;
	double rate = atof(argv[2]) * 1e6 / 4096; /* pages a second */
	long lifetime = argc == 4 ? atol(argv[3]) : 3600;
	if (pages == 0 || rate < 0 || lifetime <= 0) {
		say("bench_writer: bad arguments");
		return 2;
	}
	unsigned char *mem = malloc(pages * 4096);
	if (!mem) {
		say("no memory");
		return 1;
	}
	for (uint64_t p = 0; p < pages; p++)
		write_page(mem + p * 4096, p, 0);
	say("ready %llu pages", (unsigned long long)pages);

	const long long tick = 10000000ll; /* 10 ms */
	struct timespec start, at, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	at = start;
	double owed = 0; /* pages due, carried between ticks */
	uint64_t written = 0, gen = 1;
	long long reported = 0;
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		long long since = diff_ns(&now, &start);
		if (since / 1000000000ll >= lifetime)
			break;
		owed += rate * tick / 1e9;
		for (; owed >= 1; owed--, written++) {
			uint64_t p = next() % pages;
			write_page(mem + p * 4096, p, gen++);
		}
		if (since / 1000000000ll > reported) {
			reported = since / 1000000000ll;
			say("written %llu MB", (unsigned long long)(written * 4096 / 1000000));
		}
		add_ns(&at, tick);
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (diff_ns(&now, &at) > tick)
			at = now; /* late: start the schedule again, no burst */
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR)
			;
	}
	say("done");
	return 0;
}
