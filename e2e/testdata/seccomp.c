/* seccomp: seccomp filters on several threads, no_new_privs, strict mode.
 *
 *   seccomp [strict|notif|kill]
 *
 * The process sets no_new_privs, then starts T1 and T2 (threads 1 and 2)
 * and, once they run, installs on them all at once (TSYNC, from the main
 * thread) filter A: getppid fails with errno 1234. Then each thread on
 * itself:
 *   T0 (main): filter B, stacked on A, with SECCOMP_FILTER_FLAG_LOG:
 *       getsid fails with EPERM
 *   T1: filter C, stacked on A: getpgid fails with errno 2345
 *   T2: nothing more (A alone)
 * On SIGUSR1 (and once at the start) each thread checks its filters on
 * itself, with raw system calls, and the main thread logs "P threads=3",
 *   "T<i> getppid=R getsid=R getpgid=R nnp=N seccomp=M" for each thread
 *   (R: "ok", or "E<errno>"), then "state end".
 * With "strict" there is no filter and no no_new_privs: T1 blocks every
 * signal, enters strict mode (SECCOMP_MODE_STRICT) and echoes "strict ok"
 * for each byte it reads from a pipe; the main thread logs "ready pid=P
 * pipe=W" (W: the pipe's write end).
 * With "notif" the main thread installs a filter that hands getppid to a
 * user-space listener (SECCOMP_FILTER_FLAG_NEW_LISTENER,
 * SECCOMP_RET_USER_NOTIF), closes the listener and logs "ready pid=P".
 * With "kill" the main thread, without no_new_privs (it runs as root),
 * installs two filters that kill the process at its first rt_sigaction or
 * umask (system calls a dump and a restore inject), then drops
 * CAP_SYS_ADMIN (which installing them took), logs "ready pid=P", and
 * calls umask on SIGUSR1.
 * Ticks "tick N" every 20 ms. */
#include "common.h"
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#define NT 3

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

/* filter installs on the calling thread a filter making system call nr
 * return action (SECCOMP_RET_ERRNO|e, or another), with flags; it returns
 * what seccomp(2) returns. */
static long filter(int nr, unsigned action, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, action),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static const char *res(long r)
{
	static __thread char buf[16];
	if (r >= 0)
		return "ok";
	snprintf(buf, sizeof buf, "E%d", errno);
	return buf;
}

static char lines[NT][256];
static volatile int gen, done[NT];

static void check(int i)
{
	const char *a = res(syscall(SYS_getppid));
	char ra[16], rb[16];
	snprintf(ra, sizeof ra, "%s", a);
	snprintf(rb, sizeof rb, "%s", res(syscall(SYS_getsid, 0)));
	snprintf(lines[i], sizeof lines[i], "T%d getppid=%s getsid=%s getpgid=%s nnp=%d seccomp=%d", i, ra, rb,
		 res(syscall(SYS_getpgid, 0)), prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), prctl(PR_GET_SECCOMP, 0, 0, 0, 0));
}

static volatile int stage; /* 1: A installed, 2: threads' own filters installed */

static void *worker(void *arg)
{
	int i = (int)(long)arg;
	while (stage < 1)
		msleep(1);
	if (i == 1 && filter(SYS_getpgid, SECCOMP_RET_ERRNO | 2345, 0))
		die("filter C");
	__atomic_add_fetch(&stage, 1, __ATOMIC_SEQ_CST);
	for (int seen = 0;;) {
		if (gen != seen) {
			seen = gen;
			check(i);
			done[i] = seen;
		}
		msleep(5);
	}
	return NULL;
}

static void report(void)
{
	int g = gen + 1;
	gen = g;
	check(0);
	done[0] = g;
	for (int i = 1; i < NT; i++)
		while (done[i] != g)
			msleep(1);
	say("P threads=%d", NT);
	for (int i = 0; i < NT; i++)
		say("%s", lines[i]);
	say("state end");
}

static int strict_pipe[2];

static void *strict_worker(void *arg)
{
	(void)arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT))
		die("strict");
	static const char ok[] = "strict ok\n";
	for (;;) {
		char c;
		if (read(strict_pipe[0], &c, 1) == 1)
			write(1, ok, sizeof ok - 1);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	signal(SIGUSR1, on_usr1);
	if (!strcmp(mode, "strict")) {
		if (pipe(strict_pipe))
			die("pipe");
		pthread_t th;
		if (pthread_create(&th, NULL, strict_worker, NULL))
			die("pthread_create");
		say("ready pid=%d pipe=%d", getpid(), strict_pipe[1]);
	} else if (!strcmp(mode, "notif")) {
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
			die("no_new_privs");
		long fd = filter(SYS_getppid, SECCOMP_RET_USER_NOTIF, SECCOMP_FILTER_FLAG_NEW_LISTENER);
		if (fd < 0)
			die("filter with a listener");
		close(fd);
		say("ready pid=%d", getpid());
	} else if (!strcmp(mode, "kill")) {
		if (filter(SYS_rt_sigaction, SECCOMP_RET_KILL_PROCESS, 0) || filter(SYS_umask, SECCOMP_RET_KILL_PROCESS, 0))
			die("filter");
		struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
		struct __user_cap_data_struct caps[2];
		if (syscall(SYS_capget, &hdr, caps))
			die("capget");
		caps[0].effective &= ~(1u << CAP_SYS_ADMIN);
		caps[0].permitted &= ~(1u << CAP_SYS_ADMIN);
		if (syscall(SYS_capset, &hdr, caps))
			die("capset");
		say("ready pid=%d", getpid());
	} else {
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
			die("no_new_privs");
		pthread_t th[NT];
		for (long i = 1; i < NT; i++)
			if (pthread_create(&th[i], NULL, worker, (void *)i))
				die("pthread_create");
		long r = filter(SYS_getppid, SECCOMP_RET_ERRNO | 1234, SECCOMP_FILTER_FLAG_TSYNC);
		if (r != 0) {
			errno = r > 0 ? 0 : errno;
			die("filter A (TSYNC)");
		}
		stage = 1;
		while (stage < NT)
			msleep(1);
		if (filter(SYS_getsid, SECCOMP_RET_ERRNO | EPERM, SECCOMP_FILTER_FLAG_LOG))
			die("filter B");
		say("ready pid=%d", getpid());
		report();
	}
	for (unsigned long tick = 1;; tick++) {
		if (got_usr1 && !strcmp(mode, "kill")) {
			say("umask");
			umask(0);
		}
		if (got_usr1 && strcmp(mode, "strict") && strcmp(mode, "notif")) {
			got_usr1 = 0;
			report();
		}
		say("tick %lu", tick);
		msleep(20);
	}
}
