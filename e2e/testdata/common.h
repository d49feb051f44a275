/* Shared helpers of the test workloads. Every workload reports on its
 * stdout (a file opened by the test, never a pipe) one line per event, with
 * a single write(2) so that a dump never catches half a line. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>

__attribute__((unused)) static void say(const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof buf - 2)
		n = sizeof buf - 2;
	buf[n++] = '\n';
	for (int off = 0; off < n;) {
		ssize_t w = write(1, buf + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			_exit(111);
		off += w;
	}
}

__attribute__((unused)) static void die(const char *what)
{
	say("FAIL %s: %s", what, strerror(errno));
	_exit(1);
}

/* msleep sleeps ms milliseconds, or less if a signal handler ran. */
__attribute__((unused)) static void msleep(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

__attribute__((unused)) static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 1099511628211ULL;
	}
	return h;
}

#define FNV_INIT 14695981039346656037ULL

/* sum64 is a fast checksum of a buffer whose length is a multiple of 8. */
__attribute__((unused)) static uint64_t sum64(const void *p, size_t n)
{
	const uint64_t *w = p;
	uint64_t h = FNV_INIT;
	for (size_t i = 0; i < n / 8; i++)
		h = (h ^ w[i]) * 1099511628211ULL + (i & 0xff);
	return h;
}

/* fill writes a reproducible, poorly compressible pattern. */
__attribute__((unused)) static void fill(void *p, size_t n, uint64_t seed)
{
	uint64_t *w = p;
	uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
	for (size_t i = 0; i < n / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		/* Every 4th page stays compressible, some are all zero. */
		size_t page = (i * 8) / 4096;
		if (page % 7 == 3)
			w[i] = 0;
		else if (page % 4 == 1)
			w[i] = i;
		else
			w[i] = x;
	}
}
