/* sigterm: a process whose end on SIGTERM depends on its signal state.
 *
 *   sigterm MODE [TRIGGER]
 *
 * Each mode sets up its dispositions, masks and threads, logs "ready", and
 * then sleeps in a system call. What SIGTERM then does:
 *   dfl        SIG_DFL, pause(): killed by SIGTERM.
 *   ign        SIGHUP, SIGUSR1, SIGPIPE ignored, SIGTERM default: killed.
 *   handler    SA_SIGINFO|SA_RESTART|SA_ONSTACK|SA_NODEFER handler on an
 *              alternate stack: exits 40 + (1 if it ran on that stack).
 *   resethand  SA_RESETHAND handler logs "first" and returns: a second
 *              SIGTERM kills.
 *   thread     a second thread blocks SIGTERM and sleeps in pause(); the main
 *              thread, not blocking it, sleeps in epoll_wait: killed.
 *   mainblock  the main thread blocks SIGTERM and waits in pthread_join
 *              (futex); the other thread sleeps in nanosleep: killed.
 *   sigwait    SIGTERM blocked, sigwaitinfo: exits 42 after logging
 *              "sigwait signo=15 code=C pid=P".
 *   sigsuspend SIGTERM blocked, handler exits 43, sigsuspend with an empty
 *              mask.
 *   futex      a futex wait on a word nobody wakes: killed.
 *   pending    SIGTERM blocked and sent to the process (pending); once the
 *              file TRIGGER exists it is unblocked: killed. */
#include "common.h"
#include <linux/futex.h>
#include <pthread.h>
#include <sys/epoll.h>

static char altstack[64 << 10];

static void on_term_info(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	char here;
	_exit(40 + (&here >= altstack && &here < altstack + sizeof altstack));
}

static void on_term_first(int sig)
{
	(void)sig;
	say("first");
}

static void on_term_43(int sig)
{
	(void)sig;
	_exit(43);
}

static void block(int sig, int how)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, sig);
	if (pthread_sigmask(how, &set, NULL))
		die("pthread_sigmask");
}

static pthread_barrier_t started;

static void *blocker(void *arg)
{
	(void)arg;
	block(SIGTERM, SIG_BLOCK);
	pthread_barrier_wait(&started);
	for (;;)
		pause();
	return NULL;
}

static void *sleeper(void *arg)
{
	(void)arg;
	block(SIGTERM, SIG_UNBLOCK); /* (created with the main thread's mask) */
	pthread_barrier_wait(&started);
	for (;;)
		msleep(100000);
	return NULL;
}

static void two_threads(void *(*fn)(void *))
{
	pthread_t th;
	pthread_barrier_init(&started, NULL, 2);
	if (pthread_create(&th, NULL, fn, NULL))
		die("pthread_create");
	pthread_barrier_wait(&started);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	const char *m = argv[1];
	struct sigaction sa = {0};
	if (!strcmp(m, "dfl")) {
		say("ready pid=%d", getpid());
		for (;;)
			pause();
	} else if (!strcmp(m, "ign")) {
		signal(SIGHUP, SIG_IGN);
		signal(SIGUSR1, SIG_IGN);
		signal(SIGPIPE, SIG_IGN);
		say("ready pid=%d", getpid());
		for (;;)
			pause();
	} else if (!strcmp(m, "handler")) {
		stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
		if (sigaltstack(&ss, NULL))
			die("sigaltstack");
		sa.sa_sigaction = on_term_info;
		sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK | SA_NODEFER;
		sigaddset(&sa.sa_mask, SIGUSR2);
		if (sigaction(SIGTERM, &sa, NULL))
			die("sigaction");
		say("ready pid=%d", getpid());
		for (;;)
			pause();
	} else if (!strcmp(m, "resethand")) {
		sa.sa_handler = on_term_first;
		sa.sa_flags = SA_RESETHAND;
		if (sigaction(SIGTERM, &sa, NULL))
			die("sigaction");
		say("ready pid=%d", getpid());
		for (;;)
			pause();
	} else if (!strcmp(m, "thread")) {
		two_threads(blocker);
		int ep = epoll_create1(EPOLL_CLOEXEC);
		if (ep < 0)
			die("epoll_create1");
		say("ready pid=%d", getpid());
		struct epoll_event ev;
		for (;;)
			epoll_wait(ep, &ev, 1, -1);
	} else if (!strcmp(m, "mainblock")) {
		block(SIGTERM, SIG_BLOCK);
		pthread_t th;
		pthread_barrier_init(&started, NULL, 2);
		if (pthread_create(&th, NULL, sleeper, NULL))
			die("pthread_create");
		pthread_barrier_wait(&started);
		say("ready pid=%d", getpid());
		pthread_join(th, NULL);
	} else if (!strcmp(m, "sigwait")) {
		block(SIGTERM, SIG_BLOCK);
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGTERM);
		say("ready pid=%d", getpid());
		siginfo_t si;
		int sig;
		while ((sig = sigwaitinfo(&set, &si)) < 0 && errno == EINTR)
			;
		say("sigwait signo=%d code=%d pid=%d", sig, si.si_code, si.si_pid);
		_exit(42);
	} else if (!strcmp(m, "sigsuspend")) {
		block(SIGTERM, SIG_BLOCK);
		sa.sa_handler = on_term_43;
		if (sigaction(SIGTERM, &sa, NULL))
			die("sigaction");
		sigset_t none;
		sigemptyset(&none);
		say("ready pid=%d", getpid());
		for (;;)
			sigsuspend(&none);
	} else if (!strcmp(m, "futex")) {
		static uint32_t word;
		say("ready pid=%d", getpid());
		for (;;)
			syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
	} else if (!strcmp(m, "pending")) {
		if (argc != 3)
			return 2;
		block(SIGTERM, SIG_BLOCK);
		kill(getpid(), SIGTERM);
		say("ready pid=%d", getpid());
		for (unsigned long tick = 1;; tick++) {
			if (access(argv[2], F_OK) == 0) {
				say("unblock");
				block(SIGTERM, SIG_UNBLOCK);
				say("still alive");
			}
			say("tick %lu", tick);
			msleep(30);
		}
	}
	return 2;
}
