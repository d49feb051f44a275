/* sleeper: sleeps in one blocking system call, then reports how it ended.
 *
 *   sleeper rel|abs|poll|pause|ioflusher|corecookie|landlock|landlockthread
 *
 * rel    nanosleep 3 s:                       "slept rc=R errno=E ms=M"
 * abs    clock_nanosleep to now+3 s absolute: "slept rc=R late_ms=L"
 * poll   poll with no fds, 3 s timeout:       "polled rc=R errno=E ms=M"
 * pause  pause() until SIGUSR1:               "paused rc=R errno=E handled=H"
 * pause2 the same, then pause() again until the next SIGUSR1: "paused
 *        again rc=R errno=E handled=H" (it lives on after the first)
 * ioflusher, corecookie: pause, made an I/O flusher (PR_SET_IO_FLUSHER)
 *        or given a core-scheduling cookie (PR_SCHED_CORE) first; if the
 *        kernel refuses, "skip REASON" and exit 77.
 * landlock, landlockthread: pause, sandboxed by Landlock first (a ruleset
 *        that forbids creating regular files, no rule): the process, or
 *        only a second thread (which then waits with SIGUSR1 blocked); if
 *        the kernel has no Landlock, "skip REASON" and exit 77.
 * It logs "sleeping pid=P" first and exits 0 if the call ended as it would
 * have without a dump (no EINTR, not early), else 1. */
#include "common.h"
#include <poll.h>
#include <pthread.h>
#include <sys/prctl.h>

/* Landlock's uapi, as linux/landlock.h has it (Linux 5.13). */
struct ll_ruleset_attr { uint64_t handled_access_fs; };
#define LL_ACCESS_FS_MAKE_REG (1ULL << 8)
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_restrict_self 446
#endif

/* landlock sandboxes the calling thread; 0, or -1 with errno set. */
static int landlock(void)
{
	struct ll_ruleset_attr attr = { .handled_access_fs = LL_ACCESS_FS_MAKE_REG };
	int fd = syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
	if (fd < 0)
		return -1;
	int rc = syscall(SYS_landlock_restrict_self, fd, 0);
	int e = errno;
	close(fd);
	errno = e;
	return rc;
}

static volatile int thread_locked; /* 1 sandboxed, -errno failed */

static void *locked_thread(void *arg)
{
	(void)arg;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	thread_locked = landlock() ? -errno : 1;
	for (;;)
		pause();
	return NULL;
}

static volatile sig_atomic_t handled;
static void on_usr1(int sig) { (void)sig; handled = 1; }

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	signal(SIGUSR1, on_usr1);
	if (!strcmp(argv[1], "ioflusher")) {
		if (prctl(57 /* PR_SET_IO_FLUSHER */, 1, 0, 0, 0)) {
			say("skip PR_SET_IO_FLUSHER: %s (it needs CAP_SYS_RESOURCE)", strerror(errno));
			return 77;
		}
		argv[1] = "pause";
	}
	if (!strcmp(argv[1], "corecookie")) {
		if (prctl(62 /* PR_SCHED_CORE */, 1 /* CREATE */, 0, 0 /* PIDTYPE_PID */, 0)) {
			say("skip PR_SCHED_CORE: %s (core scheduling needs SMT and CONFIG_SCHED_CORE)", strerror(errno));
			return 77;
		}
		argv[1] = "pause";
	}
	if (!strcmp(argv[1], "landlock")) {
		if (landlock()) {
			say("skip Landlock: %s (CONFIG_SECURITY_LANDLOCK, and landlock in the lsm= list)", strerror(errno));
			return 77;
		}
		argv[1] = "pause";
	}
	if (!strcmp(argv[1], "landlockthread")) {
		pthread_t th;
		if (pthread_create(&th, NULL, locked_thread, NULL))
			return 2;
		while (!thread_locked)
			usleep(1000);
		if (thread_locked < 0) {
			say("skip Landlock: %s (CONFIG_SECURITY_LANDLOCK, and landlock in the lsm= list)", strerror(-thread_locked));
			return 77;
		}
		argv[1] = "pause";
	}
	long t0 = now_ms();
	say("sleeping pid=%d", getpid());
	if (!strcmp(argv[1], "rel")) {
		struct timespec req = {3, 0}, rem = {0, 0};
		int rc = nanosleep(&req, &rem);
		int e = rc ? errno : 0;
		long ms = now_ms() - t0;
		say("slept rc=%d errno=%d ms=%ld", rc, e, ms);
		return rc == 0 && ms >= 3000 ? 0 : 1;
	}
	if (!strcmp(argv[1], "abs")) {
		struct timespec until;
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += 3;
		int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long late = (now.tv_sec - until.tv_sec) * 1000 + (now.tv_nsec - until.tv_nsec) / 1000000;
		say("slept rc=%d late_ms=%ld", rc, late);
		return rc == 0 && late >= 0 ? 0 : 1;
	}
	if (!strcmp(argv[1], "poll")) {
		int rc = poll(NULL, 0, 3000);
		int e = rc < 0 ? errno : 0;
		long ms = now_ms() - t0;
		say("polled rc=%d errno=%d ms=%ld", rc, e, ms);
		return rc == 0 && ms >= 3000 ? 0 : 1;
	}
	if (!strcmp(argv[1], "pause") || !strcmp(argv[1], "pause2")) {
		int rc = pause();
		int e = errno;
		say("paused rc=%d errno=%d handled=%d", rc, e, (int)handled);
		int ok = rc == -1 && e == EINTR && handled;
		if (!strcmp(argv[1], "pause2")) {
			handled = 0;
			rc = pause();
			e = errno;
			say("paused again rc=%d errno=%d handled=%d", rc, e, (int)handled);
			ok = ok && rc == -1 && e == EINTR && handled;
		}
		return ok ? 0 : 1;
	}
	return 2;
}
