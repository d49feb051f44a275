/* sigthreads: per-thread signal state.
 *
 *   sigthreads TRIGGER
 *
 * The main thread has a 64 KiB alternate stack; the second thread ("T")
 * one of 32 KiB with SS_AUTODISARM, and blocks SIGRTMIN+2, on which
 * SIGRTMIN+2 is queued twice to that thread only, with values 7 and 8 and
 * si_code SI_QUEUE (rt_tgsigqueueinfo). The main thread blocks SIGUSR2,
 * raised and pending on it. Logs "ready pid=P tid=T", then "tick N".
 *
 * Once the file TRIGGER exists, T unblocks SIGRTMIN+2 and the main thread
 * SIGUSR2: each handler logs "rt tid=X value=V code=C" and
 * "usr2 tid=X", then each thread raises SIGUSR1, whose SA_ONSTACK handler
 * logs "usr1 tid=X stack=main|thread|none"; then "done tid=X". */
#include "common.h"
#include <pthread.h>

#ifndef SS_AUTODISARM
#define SS_AUTODISARM (1U << 31)
#endif

static char main_stack[64 << 10], thread_stack[32 << 10];
static volatile pid_t ttid;
static const char *trigger;

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	say("rt tid=%d value=%d code=%d", gettid(), si->si_value.sival_int, si->si_code);
}

static void on_usr2(int sig)
{
	(void)sig;
	say("usr2 tid=%d", gettid());
}

static void on_usr1(int sig)
{
	(void)sig;
	char here;
	const char *on = "none";
	if (&here >= main_stack && &here < main_stack + sizeof main_stack)
		on = "main";
	else if (&here >= thread_stack && &here < thread_stack + sizeof thread_stack)
		on = "thread";
	say("usr1 tid=%d stack=%s", gettid(), on);
}

static void handle(int sig, void (*fn)(int), void (*info)(int, siginfo_t *, void *), int flags)
{
	struct sigaction sa = {0};
	sa.sa_flags = flags;
	if (info) {
		sa.sa_sigaction = info;
		sa.sa_flags |= SA_SIGINFO;
	} else {
		sa.sa_handler = fn;
	}
	if (sigaction(sig, &sa, NULL))
		die("sigaction");
}

static void mask(int how, int sig)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, sig);
	if (pthread_sigmask(how, &set, NULL))
		die("pthread_sigmask");
}

static void wait_trigger(void)
{
	while (access(trigger, F_OK) != 0)
		msleep(20);
}

static pthread_barrier_t started;

static void *thread(void *arg)
{
	(void)arg;
	stack_t ss = {.ss_sp = thread_stack, .ss_size = sizeof thread_stack, .ss_flags = SS_AUTODISARM};
	if (sigaltstack(&ss, NULL))
		die("sigaltstack thread");
	mask(SIG_BLOCK, SIGRTMIN + 2);
	ttid = gettid();
	pthread_barrier_wait(&started);
	wait_trigger();
	mask(SIG_UNBLOCK, SIGRTMIN + 2);
	raise(SIGUSR1);
	say("done tid=%d", gettid());
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	trigger = argv[1];
	handle(SIGRTMIN + 2, NULL, on_rt, 0);
	handle(SIGUSR2, on_usr2, NULL, SA_RESTART);
	handle(SIGUSR1, on_usr1, NULL, SA_ONSTACK);
	stack_t ss = {.ss_sp = main_stack, .ss_size = sizeof main_stack};
	if (sigaltstack(&ss, NULL))
		die("sigaltstack");
	mask(SIG_BLOCK, SIGUSR2);
	raise(SIGUSR2);

	pthread_t th;
	pthread_barrier_init(&started, NULL, 2);
	if (pthread_create(&th, NULL, thread, NULL))
		die("pthread_create");
	pthread_barrier_wait(&started);
	for (int v = 7; v <= 8; v++) {
		siginfo_t si = {0};
		si.si_signo = SIGRTMIN + 2;
		si.si_code = SI_QUEUE;
		si.si_pid = getpid();
		si.si_uid = getuid();
		si.si_value.sival_int = v;
		if (syscall(SYS_rt_tgsigqueueinfo, getpid(), ttid, SIGRTMIN + 2, &si))
			die("rt_tgsigqueueinfo");
	}
	say("ready pid=%d tid=%d", getpid(), ttid);
	for (unsigned long tick = 1;; tick++) {
		if (access(trigger, F_OK) == 0) {
			mask(SIG_UNBLOCK, SIGUSR2);
			raise(SIGUSR1);
			say("done tid=%d", gettid());
			for (;;) {
				say("tick %lu", tick++);
				msleep(30);
			}
		}
		say("tick %lu", tick);
		msleep(30);
	}
}
