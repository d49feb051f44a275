/* signals: handlers, blocked pending signals, sigaltstack and an itimer.
 *
 *   signals TRIGGER
 *
 * SIGUSR1 is blocked and raised (pending on the thread); SIGRTMIN+1 is
 * blocked and queued twice with values 42 and 43 (pending on the process).
 * Once the file TRIGGER exists, both are unblocked and their handlers log
 * "usr1 handled code=C pid=P" and "rt value=V", then "unblocked".
 * SIGUSR2 runs on the alternate stack: "usr2 onstack=1", after it logs
 * the actions of SIGWINCH and SIGTTIN (see actions), which it logs at the
 * start too.
 * ITIMER_REAL fires every 50 ms; each tick logs "tick N alarms A". */
#include "common.h"
#include <sys/time.h>

static volatile sig_atomic_t alarms;
static char altstack[64 << 10];

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	say("usr1 handled code=%d pid=%d", si->si_code, si->si_pid);
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	say("rt value=%d code=%d", si->si_value.sival_int, si->si_code);
}

/* actions logs the actions of SIGWINCH (SIG_DFL, with flags and a mask)
 * and SIGTTIN (SIG_IGN, with flags): "actions winch=... ttin=...". */
static void actions(void)
{
	struct sigaction w, i;
	sigaction(SIGWINCH, NULL, &w);
	sigaction(SIGTTIN, NULL, &i);
	say("actions winch=%s/%#x/%d ttin=%s/%#x", w.sa_handler == SIG_DFL ? "dfl" : "other", (unsigned)w.sa_flags,
	    sigismember(&w.sa_mask, SIGINT), i.sa_handler == SIG_IGN ? "ign" : "other", (unsigned)i.sa_flags);
}

static void on_usr2(int sig)
{
	(void)sig;
	actions();
	char here;
	int on = &here >= altstack && &here < altstack + sizeof altstack;
	say("usr2 onstack=%d", on);
}

static void on_alrm(int sig) { (void)sig; alarms++; }

static void handle(int sig, void (*fn)(int, siginfo_t *, void *), void (*plain)(int), int flags)
{
	struct sigaction sa = {0};
	if (fn) {
		sa.sa_sigaction = fn;
		flags |= SA_SIGINFO;
	} else {
		sa.sa_handler = plain;
	}
	sa.sa_flags = flags;
	sigaddset(&sa.sa_mask, SIGINT);
	if (sigaction(sig, &sa, NULL))
		die("sigaction");
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	int rt = SIGRTMIN + 1;
	handle(SIGUSR1, on_usr1, NULL, SA_RESTART);
	handle(rt, on_rt, NULL, 0);
	handle(SIGUSR2, NULL, on_usr2, SA_ONSTACK | SA_RESTART);
	handle(SIGALRM, NULL, on_alrm, SA_RESTART);
	struct sigaction dfl = {.sa_handler = SIG_DFL, .sa_flags = SA_RESTART}, ign = {.sa_handler = SIG_IGN, .sa_flags = SA_NOCLDSTOP};
	sigaddset(&dfl.sa_mask, SIGINT);
	if (sigaction(SIGWINCH, &dfl, NULL) || sigaction(SIGTTIN, &ign, NULL))
		die("sigaction");
	actions();
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
	if (sigaltstack(&ss, NULL))
		die("sigaltstack");

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, rt);
	sigprocmask(SIG_BLOCK, &set, NULL);
	raise(SIGUSR1);
	if (sigqueue(getpid(), rt, (union sigval){.sival_int = 42}) ||
	    sigqueue(getpid(), rt, (union sigval){.sival_int = 43}))
		die("sigqueue");

	struct itimerval it = {{0, 50000}, {0, 50000}};
	if (setitimer(ITIMER_REAL, &it, NULL))
		die("setitimer");

	say("ready pid=%d", getpid());
	int blocked = 1;
	for (unsigned long tick = 1;; tick++) {
		if (blocked && access(argv[1], F_OK) == 0) {
			blocked = 0;
			sigprocmask(SIG_UNBLOCK, &set, NULL);
			say("unblocked");
		}
		say("tick %lu alarms %d", tick, (int)alarms);
		msleep(30);
	}
}
