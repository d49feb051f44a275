/* clocks: a program that keeps time by the monotonic clock, as event
 * loops do: absolute deadlines on CLOCK_MONOTONIC.
 *
 *   clocks [unshare] [mem=KIB]
 *
 * With "unshare" it first makes a time namespace for its children to
 * come (unshare(CLONE_NEWTIME)), and stays in its own. With mem=KIB it
 * keeps KIB KiB of memory with known contents: each round checks them
 * (a "FAIL memory" line and exit if they changed) and rewrites a page.
 *
 * Each round it takes t0 = CLOCK_MONOTONIC, arms a timerfd at t0 + 300 ms
 * (TFD_TIMER_ABSTIME), sleeps until t0 + 100 ms (clock_nanosleep,
 * TIMER_ABSTIME), then 50 ms more (nanosleep, relative), then waits for
 * the timerfd, and prints
 *
 *   "tick N mono=MS boot=MS real=MS slept=MS fired=K"
 *
 * with the three clocks read at the end of the round, slept the
 * monotonic time the round took and fired what the timerfd read gave.
 * A restore that moved CLOCK_MONOTONIC would show the jump in mono (and
 * boot) against real, and a round that slept much longer or shorter than
 * 300 ms. Lines: "ready pid=P" first. */
#include "common.h"
#include <sched.h>
#include <sys/timerfd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x80
#endif

static int64_t ms_of(clockid_t c)
{
	struct timespec ts;
	if (clock_gettime(c, &ts))
		die("clock_gettime");
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct timespec plus_ms(struct timespec t, long ms)
{
	t.tv_nsec += (ms % 1000) * 1000000L;
	t.tv_sec += ms / 1000 + t.tv_nsec / 1000000000L;
	t.tv_nsec %= 1000000000L;
	return t;
}

int main(int argc, char **argv)
{
	size_t memsz = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "unshare") == 0) {
			if (unshare(CLONE_NEWTIME))
				die("unshare(CLONE_NEWTIME)");
		} else if (strncmp(argv[i], "mem=", 4) == 0) {
			memsz = (size_t)atol(argv[i] + 4) * 1024;
		}
	}
	unsigned char *mem = NULL;
	uint64_t memsum = 0;
	if (memsz) {
		mem = mmap(NULL, memsz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (mem == MAP_FAILED)
			die("mmap");
		for (size_t i = 0; i < memsz; i++)
			mem[i] = (unsigned char)(i * 7 + 1);
		memsum = sum64(mem, memsz);
	}
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	if (tfd < 0)
		die("timerfd_create");
	say("ready pid=%d", getpid());
	for (unsigned long tick = 1;; tick++) {
		struct timespec t0;
		if (clock_gettime(CLOCK_MONOTONIC, &t0))
			die("clock_gettime");
		struct itimerspec it = {.it_value = plus_ms(t0, 300)};
		if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &it, NULL))
			die("timerfd_settime");
		struct timespec until = plus_ms(t0, 100);
		int e;
		while ((e = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL)) == EINTR)
			;
		if (e) {
			errno = e;
			die("clock_nanosleep");
		}
		struct timespec rel = {0, 50000000}, left;
		while (nanosleep(&rel, &left) && errno == EINTR)
			rel = left;
		uint64_t fired;
		if (read(tfd, &fired, 8) != 8)
			die("read timerfd");
		if (memsz) {
			if (sum64(mem, memsz) != memsum) {
				say("FAIL memory: its contents changed");
				_exit(1);
			}
			memcpy(mem + (tick * 4096) % memsz, &tick, sizeof tick);
			memsum = sum64(mem, memsz);
		}
		int64_t t0ms = (int64_t)t0.tv_sec * 1000 + t0.tv_nsec / 1000000;
		int64_t mono = ms_of(CLOCK_MONOTONIC);
		say("tick %lu mono=%lld boot=%lld real=%lld slept=%lld fired=%llu", tick, (long long)mono,
		    (long long)ms_of(CLOCK_BOOTTIME), (long long)ms_of(CLOCK_REALTIME), (long long)(mono - t0ms),
		    (unsigned long long)fired);
	}
}
