/* counter: a process that counts, with optional large heaps.
 *
 *   counter [-m MiB] [-b MiB] [-t ms] [-s KIND]
 *
 * -m MiB  malloc a heap of that size (glibc maps it) and fill it
 * -b MiB  grow the brk heap by that much with sbrk and fill it
 * -t ms   tick interval (default 20)
 * -u MiB  map that much anonymous memory and touch only every 16th page:
 *         logs "sparse addr=ADDR touched=N"
 * -s KIND also hold an fd of a kind migrate refuses: "netlink" (a
 *         NETLINK_USERSOCK socket, a protocol migrate refuses), "packet"
 *         (an AF_PACKET socket), "perf" (a perf event counting the
 *         process's task clock), "uffd" (a userfaultfd), "pty" (a pty
 *         master) or "pidfd" (a pidfd of its parent, outside a dump);
 *         logs "unsupported fd N"
 *
 * Lines: "ready pid=P sum=S" once set up, then "tick N" per tick.
 * SIGUSR1: recompute the heap checksum ("sum S"), then malloc and free
 * memory from the brk heap ("brk OLD NEW ok|FAIL").
 * SIGUSR2: print the signal state ("state ...") as the process sees it.
 * The process also has signal state for rollback tests to compare:
 * handlers with flags, a blocked and pending SIGWINCH, a sigaltstack, and
 * SIGPIPE ignored. */
#include "common.h"
#include <linux/netlink.h>
#include <linux/perf_event.h>
#include <sys/socket.h>
#include <sys/time.h>

static volatile sig_atomic_t got_usr1, got_usr2;
static char *mheap, *bheap;
static size_t mlen, blen;

static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }
static void on_usr2(int sig, siginfo_t *si, void *uc) { (void)sig; (void)si; (void)uc; got_usr2 = 1; }
static void on_winch(int sig) { (void)sig; say("winch delivered"); }

static uint64_t heap_sum(void)
{
	uint64_t h = FNV_INIT;
	if (mlen)
		h ^= sum64(mheap, mlen);
	if (blen)
		h = h * 31 + sum64(bheap, blen);
	return h;
}

struct ksigaction {
	uint64_t handler, flags, restorer, mask;
};

static void report_state(void)
{
	uint64_t h = FNV_INIT;
	for (int sig = 1; sig <= 64; sig++) {
		struct ksigaction ka;
		if (syscall(SYS_rt_sigaction, sig, NULL, &ka, 8) != 0)
			memset(&ka, 0xff, sizeof ka);
		h = fnv1a(h, &ka, sizeof ka);
	}
	uint64_t blk = 0, pnd = 0;
	syscall(SYS_rt_sigprocmask, SIG_BLOCK, NULL, &blk, 8);
	syscall(SYS_rt_sigpending, &pnd, 8);
	stack_t ss;
	sigaltstack(NULL, &ss);
	struct itimerval it;
	getitimer(ITIMER_REAL, &it);
	say("state sa=%016llx blk=%016llx pnd=%016llx alt=%p/%zu/%d itimer=%ld.%06ld",
	    (unsigned long long)h, (unsigned long long)blk, (unsigned long long)pnd,
	    ss.ss_sp, ss.ss_size, ss.ss_flags, (long)it.it_interval.tv_sec, (long)it.it_interval.tv_usec);
}

static void brk_test(void)
{
	void *before = sbrk(0);
	enum { N = 256, SZ = 64 << 10 };
	static char *p[N];
	int ok = 1;
	for (int i = 0; i < N; i++) {
		p[i] = malloc(SZ);
		if (!p[i]) {
			ok = 0;
			break;
		}
		memset(p[i], i, SZ);
	}
	void *after = sbrk(0);
	for (int i = 0; i < N && p[i]; i++) {
		for (int j = 0; j < SZ; j += 4096)
			if (p[i][j] != (char)i)
				ok = 0;
		free(p[i]);
		p[i] = NULL;
	}
	say("brk %p %p %s", before, after, ok && after > before ? "ok" : "FAIL");
}

int main(int argc, char **argv)
{
	long mmib = 0, bmib = 0, umib = 0, tick_ms = 20;
	const char *odd = NULL;
	int opt;
	while ((opt = getopt(argc, argv, "m:b:t:s:u:")) != -1) {
		switch (opt) {
		case 'm': mmib = atol(optarg); break;
		case 'b': bmib = atol(optarg); break;
		case 't': tick_ms = atol(optarg); break;
		case 'u': umib = atol(optarg); break;
		case 's': odd = optarg; break;
		default: return 2;
		}
	}

	struct sigaction sa = {0};
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigaddset(&sa.sa_mask, SIGTERM);
	if (sigaction(SIGUSR1, &sa, NULL))
		die("sigaction");
	struct sigaction sa2 = {0};
	sa2.sa_sigaction = on_usr2;
	sa2.sa_flags = SA_SIGINFO | SA_ONSTACK;
	if (sigaction(SIGUSR2, &sa2, NULL))
		die("sigaction");
	signal(SIGWINCH, on_winch);
	signal(SIGPIPE, SIG_IGN);
	static char altstack[64 << 10];
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
	if (sigaltstack(&ss, NULL))
		die("sigaltstack");
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGWINCH);
	sigprocmask(SIG_BLOCK, &set, NULL);
	raise(SIGWINCH); /* stays pending */

	if (bmib) {
		blen = (size_t)bmib << 20;
		bheap = sbrk(blen);
		if (bheap == (void *)-1)
			die("sbrk");
		fill(bheap, blen, 2);
	}
	if (mmib) {
		mlen = (size_t)mmib << 20;
		mheap = malloc(mlen);
		if (!mheap)
			die("malloc");
		fill(mheap, mlen, 1);
	}
	if (umib) {
		size_t len = (size_t)umib << 20;
		char *sp = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (sp == MAP_FAILED)
			die("mmap");
		/* No transparent huge pages: a touch must fault in one page. */
		madvise(sp, len, MADV_NOHUGEPAGE);
		long touched = 0;
		for (size_t off = 0; off < len; off += 16 * 4096, touched++)
			sp[off] = 1 + touched % 200;
		say("sparse addr=%p touched=%ld", sp, touched);
	}
	if (odd) {
		int fd = -1;
		if (!strcmp(odd, "netlink"))
			fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_USERSOCK);
		else if (!strcmp(odd, "packet"))
			fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		else if (!strcmp(odd, "uffd"))
			fd = syscall(SYS_userfaultfd, O_CLOEXEC);
		else if (!strcmp(odd, "pty"))
			fd = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
		else if (!strcmp(odd, "pidfd"))
			fd = syscall(SYS_pidfd_open, getppid(), 0);
		else if (!strcmp(odd, "perf")) {
			struct perf_event_attr pa = {0};
			pa.size = sizeof pa;
			pa.type = PERF_TYPE_SOFTWARE;
			pa.config = PERF_COUNT_SW_TASK_CLOCK;
			fd = syscall(SYS_perf_event_open, &pa, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
		}
		else
			return 2;
		if (fd < 0)
			die(odd);
		say("unsupported fd %d", fd);
	}

	say("ready pid=%d sum=%016llx", getpid(), (unsigned long long)heap_sum());
	for (unsigned long tick = 1;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			say("sum %016llx", (unsigned long long)heap_sum());
			brk_test();
		}
		if (got_usr2) {
			got_usr2 = 0;
			report_state();
		}
		say("tick %lu", tick);
		msleep(tick_ms);
	}
}
