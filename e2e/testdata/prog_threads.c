/* prog_threads: a multi-threaded C program of the kind a daemon is.
 *
 *   prog_threads
 *
 * Threads (each named with pthread_setname_np):
 *   - "worker0".."worker7": hammer 8 MiB of shared memory in 16 regions,
 *     each under an error-checking mutex (an unlock from a thread whose TID
 *     is not the owner's fails with EPERM). An operation adds x to one word
 *     of a region and takes it from another, so every region sums to 0, and
 *     bumps the region's version and the global op count under the lock,
 *     so that with all locks held the versions add up to the op count.
 *     Every 4096 operations a worker checks that gettid() is still the TID
 *     it started with.
 *   - "condwait": pthread_cond_timedwait (CLOCK_MONOTONIC) with a 300 ms
 *     deadline, in a loop; a timeout earlier than the deadline is a FAIL.
 *     It counts timeouts, and logs "cond woken gen=G" when main signals it.
 *   - "epoll": epoll_wait (no timeout) on an eventfd and a timerfd that
 *     fires every 200 ms; logs "timer total=N" (expirations so far) and
 *     "event value=V" for what was written to the eventfd.
 *   - main: "tick N ops=X" every 100 ms; on SIGUSR1 takes every region lock
 *     and logs "check ok ops=X static=S" (or FAIL), where S is the checksum
 *     of 32 MiB written once at start ("ready ... static=S"); on SIGUSR2
 *     writes 1000+gen to the eventfd and wakes the cond thread.
 *
 * Any inconsistency is logged as "FAIL ..." and ends the process. */
#include "common.h"
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

#define NWORKERS 8
#define NREGIONS 16
#define REGION_WORDS (64 << 10) /* 512 KiB a region, 8 MiB in all */
#define STATIC_BYTES (32 << 20)

struct region {
	pthread_mutex_t m;
	uint64_t version;
	uint64_t *w;
} __attribute__((aligned(64)));

static struct region regions[NREGIONS];
static uint64_t ops; /* changed under a region lock, atomically */
static unsigned char *static_mem;
static uint64_t static_sum;

static pthread_mutex_t cond_m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond;
static int cond_gen; /* under cond_m */

static int efd, tfd;

static volatile sig_atomic_t got_usr1, got_usr2;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }
static void on_usr2(int sig) { (void)sig; got_usr2 = 1; }

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

static void failrc(const char *what, int rc)
{
	errno = rc;
	die(what);
}

static void *worker(void *arg)
{
	long id = (long)arg;
	char name[16];
	snprintf(name, sizeof name, "worker%ld", id);
	pthread_setname_np(pthread_self(), name);
	pid_t tid = gettid_();
	say("worker %ld tid=%d", id, tid);
	uint64_t x = 0x9E3779B97F4A7C15ULL * (id + 1);
	for (uint64_t n = 1;; n++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		struct region *r = &regions[x % NREGIONS];
		int rc = pthread_mutex_lock(&r->m);
		if (rc)
			failrc("worker lock", rc);
		uint64_t i = (x >> 8) % REGION_WORDS, j = (x >> 32) % REGION_WORDS;
		r->w[i] += x;
		r->w[j] -= x;
		r->version++;
		__atomic_add_fetch(&ops, 1, __ATOMIC_RELAXED);
		rc = pthread_mutex_unlock(&r->m);
		if (rc) /* EPERM: the mutex's owner TID is not ours */
			failrc("worker unlock", rc);
		if (n % 4096 == 0 && gettid_() != tid) {
			say("FAIL worker %ld: tid %d, started as %d", id, gettid_(), tid);
			_exit(1);
		}
	}
	return NULL;
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *condwait(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), "condwait");
	int timeouts = 0, seen = 0;
	pthread_mutex_lock(&cond_m);
	for (;;) {
		int64_t deadline = now_ns() + 300 * 1000000LL;
		struct timespec ts = {deadline / 1000000000LL, deadline % 1000000000LL};
		int rc = 0;
		while (cond_gen == seen && rc == 0)
			rc = pthread_cond_timedwait(&cond, &cond_m, &ts);
		if (cond_gen != seen) {
			seen = cond_gen;
			say("cond woken gen=%d timeouts=%d", seen, timeouts);
			continue;
		}
		if (rc != ETIMEDOUT)
			failrc("pthread_cond_timedwait", rc);
		if (now_ns() < deadline) {
			say("FAIL cond timed out %lld ns early", (long long)(deadline - now_ns()));
			_exit(1);
		}
		timeouts++;
	}
	return NULL;
}

static void *epoller(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), "epoll");
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev))
		die("epoll_ctl eventfd");
	ev.data.u64 = 2;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev))
		die("epoll_ctl timerfd");
	say("epoll fd=%d", ep);
	uint64_t total = 0;
	for (;;) {
		struct epoll_event got[4];
		int n = epoll_wait(ep, got, 4, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("epoll_wait");
		for (int k = 0; k < n; k++) {
			uint64_t v;
			int fd = got[k].data.u64 == 1 ? efd : tfd;
			if (read(fd, &v, 8) != 8) {
				if (errno == EAGAIN)
					continue;
				die(fd == efd ? "read eventfd" : "read timerfd");
			}
			if (fd == efd) {
				say("event value=%llu", (unsigned long long)v);
			} else {
				total += v;
				say("timer total=%llu", (unsigned long long)total);
			}
		}
	}
	return NULL;
}

/* check takes every region lock (in order) and checks the invariants. */
static void check(void)
{
	for (int r = 0; r < NREGIONS; r++) {
		int rc = pthread_mutex_lock(&regions[r].m);
		if (rc)
			failrc("check lock", rc);
	}
	uint64_t versions = 0;
	for (int r = 0; r < NREGIONS; r++) {
		uint64_t sum = 0;
		for (int i = 0; i < REGION_WORDS; i++)
			sum += regions[r].w[i];
		if (sum != 0) {
			say("FAIL region %d sums to %llu, not 0", r, (unsigned long long)sum);
			_exit(1);
		}
		versions += regions[r].version;
	}
	uint64_t n = __atomic_load_n(&ops, __ATOMIC_RELAXED);
	if (versions != n) {
		say("FAIL region versions add up to %llu, ops %llu", (unsigned long long)versions, (unsigned long long)n);
		_exit(1);
	}
	uint64_t s = sum64(static_mem, STATIC_BYTES);
	if (s != static_sum) {
		say("FAIL static memory checksum %016llx, was %016llx", (unsigned long long)s, (unsigned long long)static_sum);
		_exit(1);
	}
	for (int r = NREGIONS - 1; r >= 0; r--) {
		int rc = pthread_mutex_unlock(&regions[r].m);
		if (rc)
			failrc("check unlock", rc);
	}
	say("check ok ops=%llu static=%016llx", (unsigned long long)n, (unsigned long long)s);
}

int main(void)
{
	static_mem = malloc(STATIC_BYTES);
	if (!static_mem)
		die("malloc");
	fill(static_mem, STATIC_BYTES, 42);
	static_sum = sum64(static_mem, STATIC_BYTES);

	pthread_mutexattr_t ma;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ERRORCHECK);
	for (int r = 0; r < NREGIONS; r++) {
		pthread_mutex_init(&regions[r].m, &ma);
		regions[r].w = calloc(REGION_WORDS, 8);
		if (!regions[r].w)
			die("calloc");
	}
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&cond, &ca);

	efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (efd < 0 || tfd < 0)
		die("eventfd/timerfd_create");
	struct itimerspec its = {.it_interval = {0, 200000000}, .it_value = {0, 200000000}};
	if (timerfd_settime(tfd, 0, &its, NULL))
		die("timerfd_settime");

	/* Signals go to main only: the others block them. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	pthread_t th;
	for (long i = 0; i < NWORKERS; i++)
		if (pthread_create(&th, NULL, worker, (void *)i))
			die("pthread_create");
	if (pthread_create(&th, NULL, condwait, NULL) || pthread_create(&th, NULL, epoller, NULL))
		die("pthread_create");
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	say("ready pid=%d static=%016llx efd=%d tfd=%d", getpid(), (unsigned long long)static_sum, efd, tfd);

	for (unsigned long tick = 1;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			check();
		}
		if (got_usr2) {
			got_usr2 = 0;
			pthread_mutex_lock(&cond_m);
			int gen = ++cond_gen;
			pthread_cond_signal(&cond);
			pthread_mutex_unlock(&cond_m);
			uint64_t v = 1000 + gen;
			if (write(efd, &v, 8) != 8)
				die("write eventfd");
		}
		msleep(100);
		say("tick %lu ops=%llu", tick, (unsigned long long)__atomic_load_n(&ops, __ATOMIC_RELAXED));
	}
}
