/* vdso: a program that reads the clocks through the vdso all the time,
 * as servers stamping requests do: clock_gettime, gettimeofday, time and
 * sched_getcpu through libc (which calls the vdso functions it resolved
 * at start), and clock_gettime through a pointer to the vdso's own
 * __vdso_clock_gettime taken at start. A second thread reads
 * CLOCK_MONOTONIC in a loop too.
 *
 * It spins, and every 100 ms of CLOCK_MONOTONIC prints
 *
 *   "tick N mono=MS real=MS tv=MS time=S ptr=MS cpu=C back=B sig=K"
 *
 * mono, real: the clocks by clock_gettime; tv: gettimeofday's; time:
 * time()'s; ptr: CLOCK_MONOTONIC through the pointer; back: how many
 * readings of CLOCK_MONOTONIC (either way, either thread) were below
 * the one before, which must stay 0; sig: SIGUSR1s handled (the handler reads the clock
 * too). Lines: "ready pid=P vdso=0xADDR ptr=0xADDR" first. */
#include "common.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sched.h>
#include <sys/auxv.h>
#include <sys/time.h>

typedef int (*gettime_fn)(clockid_t, struct timespec *);

static volatile sig_atomic_t sigs;
static atomic_ulong thread_back;

static int64_t ns(struct timespec ts) { return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec; }

static void *spin(void *arg)
{
	(void)arg;
	int64_t last = 0;
	for (;;) {
		struct timespec m;
		if (clock_gettime(CLOCK_MONOTONIC, &m))
			die("clock_gettime");
		if (ns(m) < last)
			atomic_fetch_add(&thread_back, 1);
		last = ns(m);
	}
	return NULL;
}

static void on_usr1(int sig)
{
	(void)sig;
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0)
		sigs++;
}

int main(void)
{
	void *vdso = dlopen("linux-vdso.so.1", RTLD_NOW | RTLD_NOLOAD);
	if (!vdso)
		die("dlopen linux-vdso.so.1");
	gettime_fn ptr = (gettime_fn)dlsym(vdso, "__vdso_clock_gettime");
	if (!ptr)
		die("dlsym __vdso_clock_gettime");
	struct sigaction sa = {.sa_handler = on_usr1, .sa_flags = SA_RESTART};
	if (sigaction(SIGUSR1, &sa, NULL))
		die("sigaction");
	pthread_t th;
	if (pthread_create(&th, NULL, spin, NULL))
		die("pthread_create");
	say("ready pid=%d vdso=%#lx ptr=%p", getpid(), getauxval(AT_SYSINFO_EHDR), (void *)ptr);
	int64_t last = 0, next = 0;
	unsigned long back = 0;
	for (unsigned long tick = 1;;) {
		struct timespec m, r, p;
		if (clock_gettime(CLOCK_MONOTONIC, &m) || clock_gettime(CLOCK_REALTIME, &r))
			die("clock_gettime");
		if (ns(m) < last)
			back++;
		last = ns(m);
		if (ptr(CLOCK_MONOTONIC, &p))
			die("__vdso_clock_gettime");
		if (ns(p) < last)
			back++;
		last = ns(p);
		struct timeval tv;
		if (gettimeofday(&tv, NULL))
			die("gettimeofday");
		time_t now = time(NULL);
		int cpu = sched_getcpu();
		if (cpu < 0)
			die("sched_getcpu");
		if (next == 0)
			next = last;
		if (last < next)
			continue;
		next += 100000000;
		say("tick %lu mono=%lld real=%lld tv=%lld time=%lld ptr=%lld cpu=%d back=%lu sig=%d", tick++,
		    (long long)(ns(m) / 1000000), (long long)(ns(r) / 1000000),
		    (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000, (long long)now, (long long)(ns(p) / 1000000), cpu,
		    back + atomic_load(&thread_back), (int)sigs);
	}
}
