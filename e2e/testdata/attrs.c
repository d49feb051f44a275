/* attrs: scheduling and process attributes, different on each thread.
 *
 *   attrs [mixed|user|mempolicy|zeroslack]
 *
 * The process sets oom_score_adj 345, coredump_filter 0x23, THP disabled (except where advised,
 * if the kernel knows that flag), child subreaper, membarrier
 * registrations (global and private expedited), personality
 * ADDR_NO_RANDOMIZE and memory-deny-write-execute (PR_SET_MDWE, if the
 * kernel knows it). Then, each thread on itself:
 *   T0 (main): SCHED_BATCH nice 5, time slice 3 ms, CPU 0, timer slack
 *       123456, pdeath SIGWINCH, I/O priority best-effort 1
 *   T1: SCHED_RR 7 with reset-on-fork, nice -3, the last CPU, pdeath SIGURG,
 *       I/O priority idle, memory-error kill policy early
 *   T2: SCHED_IDLE nice 7 (with the time slice 5 ms it had as SCHED_OTHER),
 *       every CPU, timer slack 777777, no pdeath signal, no I/O priority
 *       (it follows nice and policy: idle 5), memory-error kill policy
 *       late, rdtsc faulting (PR_TSC_SIGSEGV)
 * (time slices of their own: Linux 6.12+; before, slice=0)
 * With "mixed", T2 also sets personality ADDR_NO_RANDOMIZE|UNAME26 on
 * itself (the personality is per thread). With "user" (for a process that
 * runs as a user without privileges) there is T0 alone, and a time slice
 * the kernel refuses is left at its default. With "mempolicy" T2 binds its
 * memory to node 0 (set_mempolicy MPOL_BIND), or logs "skip numa: REASON"
 * and exits 77 on a kernel without NUMA. With "zeroslack" the main thread
 * is SCHED_RR 1 while it creates the others, and T2 leaves its timer
 * slack alone: leaving the real-time policy gives it its creator's, 0.
 * If the kernel refuses SCHED_RR it logs "skip rt: REASON" and exits 77.
 * It logs "ready pid=P tids=A,B,C", then the state as each thread reads it
 * of itself:
 *   "P oom=N cdf=HEX thp=N subreaper=N membarrier=0xN personality=0xN mdwe=N"
 *   "T<i> policy=N prio=N rof=N nice=N slice=N cpus=LIST slack=N pdeath=N io=0xN mce=N tsc=N"
 *   "state end"
 * and the same again on every SIGUSR1. Ticks "tick N" every 20 ms. */
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <linux/membarrier.h>

#define NT 3
#ifndef PR_THP_DISABLE_EXCEPT_ADVISED
#define PR_THP_DISABLE_EXCEPT_ADVISED (1 << 1)
#endif

static int user, nt = NT;

/* struct sched_attr, under a name of its own (headers differ on it). */
struct attr {
	uint32_t size, policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	uint64_t runtime, deadline, period;
};

/* setslice gives the calling thread a time slice of its own under policy. */
static void setslice(uint32_t policy, int nice, uint64_t ns)
{
	struct attr a = {.size = sizeof a, .policy = policy, .nice = nice, .runtime = ns};
	if (syscall(SYS_sched_setattr, 0, &a, 0) && !(user && errno == EPERM))
		die("sched_setattr");
}

static uint64_t slice(void)
{
	struct attr a = {0};
	if (syscall(SYS_sched_getattr, 0, &a, sizeof a, 0))
		die("sched_getattr");
	return (a.policy == SCHED_FIFO || a.policy == SCHED_RR) ? 0 : a.runtime;
}

static int ioprio(void) { return syscall(SYS_ioprio_get, 1 /* IOPRIO_WHO_PROCESS */, 0); }

static void setioprio(int class, int level)
{
	if (syscall(SYS_ioprio_set, 1, 0, class << 13 | level))
		die("ioprio_set");
}

static pid_t tids[NT];
static char lines[NT][256];
static volatile int generation, done;
static volatile sig_atomic_t asked;
static int ncpu, mixed, mempolicy, zeroslack;

static void on_usr1(int sig) { (void)sig; asked = 1; }

static void cpulist(cpu_set_t *set, char *out, size_t n)
{
	out[0] = 0;
	for (int c = 0; c < CPU_SETSIZE; c++) {
		if (!CPU_ISSET(c, set))
			continue;
		int e = c;
		while (e + 1 < CPU_SETSIZE && CPU_ISSET(e + 1, set))
			e++;
		size_t l = strlen(out);
		if (e == c)
			snprintf(out + l, n - l, "%s%d", l ? "," : "", c);
		else
			snprintf(out + l, n - l, "%s%d-%d", l ? "," : "", c, e);
		c = e;
	}
}

/* describe writes what thread i reads of itself into lines[i]. */
static void describe(int i)
{
	int policy = sched_getscheduler(0);
	struct sched_param sp;
	sched_getparam(0, &sp);
	errno = 0;
	int nice = getpriority(PRIO_PROCESS, 0);
	cpu_set_t set;
	CPU_ZERO(&set);
	sched_getaffinity(0, sizeof set, &set);
	char cpus[128];
	cpulist(&set, cpus, sizeof cpus);
	int pdeath = 0;
	prctl(PR_GET_PDEATHSIG, &pdeath);
	int tsc = 0;
	prctl(PR_GET_TSC, &tsc);
	snprintf(lines[i], sizeof lines[i], "T%d policy=%d prio=%d rof=%d nice=%d slice=%llu cpus=%s slack=%d pdeath=%d io=%#x mce=%d tsc=%d",
		 i, policy & ~SCHED_RESET_ON_FORK, sp.sched_priority, !!(policy & SCHED_RESET_ON_FORK), nice,
		 (unsigned long long)slice(), cpus, prctl(PR_GET_TIMERSLACK), pdeath, ioprio(), prctl(PR_MCE_KILL_GET, 0, 0, 0, 0), tsc);
}

static void pin(int cpu_lo, int cpu_hi)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	for (int c = cpu_lo; c <= cpu_hi; c++)
		CPU_SET(c, &set);
	if (sched_setaffinity(0, sizeof set, &set))
		die("sched_setaffinity");
}

static void *worker(void *arg)
{
	long i = (long)arg;
	tids[i] = gettid();
	if (i == 1) {
		if (setpriority(PRIO_PROCESS, 0, -3))
			die("setpriority");
		struct sched_param sp = {.sched_priority = 7};
		if (sched_setscheduler(0, SCHED_RR | SCHED_RESET_ON_FORK, &sp)) {
			say("skip rt: SCHED_RR refused: %s", strerror(errno));
			_exit(77);
		}
		pin(ncpu - 1, ncpu - 1);
		if (prctl(PR_SET_PDEATHSIG, SIGURG))
			die("PR_SET_PDEATHSIG");
		setioprio(3, 0);
		if (prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0))
			die("PR_MCE_KILL");
	} else {
		setslice(SCHED_OTHER, 0, 5000000);
		struct sched_param sp = {0};
		if (sched_setscheduler(0, SCHED_IDLE, &sp))
			die("SCHED_IDLE");
		if (setpriority(PRIO_PROCESS, 0, 7))
			die("setpriority");
		pin(0, ncpu - 1);
		if (!zeroslack && prctl(PR_SET_TIMERSLACK, 777777))
			die("PR_SET_TIMERSLACK");
		if (prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_LATE, 0, 0))
			die("PR_MCE_KILL");
		/* Nothing this thread runs from here on reads the TSC (no
		 * vdso clock: nanosleep and system calls only). */
		if (prctl(PR_SET_TSC, PR_TSC_SIGSEGV))
			die("PR_SET_TSC");
		if (mixed && personality(ADDR_NO_RANDOMIZE | UNAME26) < 0)
			die("personality");
		unsigned long node0 = 1;
		if (mempolicy && syscall(SYS_set_mempolicy, 2 /* MPOL_BIND */, &node0, 64)) {
			say("skip numa: set_mempolicy: %s", strerror(errno));
			_exit(77);
		}
	}
	int seen = 0;
	__atomic_add_fetch(&done, 1, __ATOMIC_SEQ_CST);
	for (;;) {
		int g = __atomic_load_n(&generation, __ATOMIC_SEQ_CST);
		if (g != seen) {
			describe(i);
			seen = g;
			__atomic_add_fetch(&done, 1, __ATOMIC_SEQ_CST);
		}
		msleep(2);
	}
	return NULL;
}

static void report(void)
{
	__atomic_store_n(&done, 0, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&generation, 1, __ATOMIC_SEQ_CST);
	describe(0);
	while (__atomic_load_n(&done, __ATOMIC_SEQ_CST) < nt - 1)
		msleep(1);
	char oom[16] = "?", cdf[16] = "?";
	int fd = open("/proc/self/oom_score_adj", O_RDONLY);
	if (fd >= 0) {
		ssize_t n = read(fd, oom, sizeof oom - 1);
		oom[n > 0 ? n - 1 : 0] = 0;
		close(fd);
	}
	fd = open("/proc/self/coredump_filter", O_RDONLY);
	if (fd >= 0) {
		ssize_t n = read(fd, cdf, sizeof cdf - 1);
		cdf[n > 0 ? n - 1 : 0] = 0;
		close(fd);
	}
	int sub = 0;
	prctl(PR_GET_CHILD_SUBREAPER, &sub);
	say("P oom=%s cdf=%s thp=%d subreaper=%d membarrier=%#x personality=%#x mdwe=%d", oom, cdf, prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0),
	    sub, (unsigned)syscall(SYS_membarrier, 1 << 9 /* MEMBARRIER_CMD_GET_REGISTRATIONS */, 0, 0),
	    (unsigned)personality(0xffffffff), prctl(66 /* PR_GET_MDWE */, 0, 0, 0, 0));
	for (int i = 0; i < nt; i++)
		say("%s", lines[i]);
	say("state end");
}

int main(int argc, char **argv)
{
	mixed = argc > 1 && !strcmp(argv[1], "mixed");
	user = argc > 1 && !strcmp(argv[1], "user");
	mempolicy = argc > 1 && !strcmp(argv[1], "mempolicy");
	zeroslack = argc > 1 && !strcmp(argv[1], "zeroslack");
	if (zeroslack) {
		struct sched_param rt = {.sched_priority = 1};
		if (sched_setscheduler(0, SCHED_RR, &rt)) {
			say("skip rt: SCHED_RR refused: %s", strerror(errno));
			_exit(77);
		}
	}
	if (user)
		nt = 1;
	ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct sigaction sa = {.sa_handler = on_usr1, .sa_flags = SA_RESTART};
	if (sigaction(SIGUSR1, &sa, NULL))
		die("sigaction");
	int fd = open("/proc/self/oom_score_adj", O_WRONLY);
	if (fd < 0 || write(fd, "345", 3) != 3)
		die("oom_score_adj");
	close(fd);
	fd = open("/proc/self/coredump_filter", O_WRONLY);
	if (fd < 0 || write(fd, "0x23", 4) != 4)
		die("coredump_filter");
	close(fd);
	if (prctl(PR_SET_THP_DISABLE, 1, PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0) && prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0))
		die("PR_SET_THP_DISABLE");
	if (prctl(PR_SET_CHILD_SUBREAPER, 1))
		die("PR_SET_CHILD_SUBREAPER");
	if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) ||
	    syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0))
		die("membarrier register");
	if (personality(ADDR_NO_RANDOMIZE) < 0)
		die("personality");
	if (prctl(65 /* PR_SET_MDWE */, 1 /* PR_MDWE_REFUSE_EXEC_GAIN */, 0, 0, 0) && errno != EINVAL)
		die("PR_SET_MDWE");
	pthread_t th;
	for (long i = 1; i < nt; i++)
		if (pthread_create(&th, NULL, worker, (void *)i))
			die("pthread_create");
	tids[0] = gettid();
	setslice(SCHED_BATCH, 5, 3000000);
	pin(0, 0);
	if (prctl(PR_SET_TIMERSLACK, 123456))
		die("PR_SET_TIMERSLACK");
	if (prctl(PR_SET_PDEATHSIG, SIGWINCH))
		die("PR_SET_PDEATHSIG");
	setioprio(2, 1);
	while (__atomic_load_n(&done, __ATOMIC_SEQ_CST) < nt - 1)
		msleep(1);
	say("ready pid=%d tids=%d,%d,%d", getpid(), tids[0], tids[1], tids[2]);
	report();
	for (unsigned long tick = 1;; tick++) {
		if (asked) {
			asked = 0;
			report();
		}
		say("tick %lu", tick);
		msleep(20);
	}
}
