/* sigtrap: signal actions of every kind, and SIGTRAP as asked (the batched
 * injection tests of core/ptrace).
 *
 *   sigtrap MODE
 *
 * Every catchable signal but SIGTRAP and SIGUSR1 gets, in turn, a handler
 * (with or without SA_SIGINFO), SIG_IGN or SIG_DFL, with flags and a mask
 * that vary with the signal. SIGUSR1's handler logs "usr1". SIGTRAP is left
 * SIG_DFL (MODE plain), blocked (block), ignored (ignore) or handled
 * (handle: the handler logs "trap code=C"). Then it logs "ready" and
 * "tick N" every 20 ms. */
#include "common.h"

static void on_plain(int sig) { (void)sig; }

static void on_info(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
}

static void on_usr1(int sig) { (void)sig; say("usr1"); }

static void on_trap(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	say("trap code=%d", si->si_code);
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	for (int sig = 1; sig < NSIG; sig++) {
		if (sig == SIGKILL || sig == SIGSTOP || sig == SIGTRAP || sig == SIGUSR1 || sig == SIGSEGV || sig == SIGBUS)
			continue;
		if (sig >= 32 && sig < SIGRTMIN)
			continue; /* the C library's own */
		struct sigaction sa = {0};
		switch (sig % 4) {
		case 0:
			sa.sa_handler = on_plain;
			sa.sa_flags = SA_RESTART | (sig % 3 ? SA_NODEFER : 0);
			break;
		case 1:
			sa.sa_sigaction = on_info;
			sa.sa_flags = SA_SIGINFO | (sig % 3 ? 0 : SA_RESETHAND);
			break;
		case 2:
			sa.sa_handler = SIG_IGN;
			sa.sa_flags = sig == SIGCHLD ? SA_NOCLDSTOP : 0;
			break;
		default:
			sa.sa_handler = SIG_DFL;
			sa.sa_flags = SA_RESTART;
		}
		sigemptyset(&sa.sa_mask);
		for (int m = 1; m < 32; m++)
			if ((sig * 7 + m) % 5 == 0 && m != SIGKILL && m != SIGSTOP)
				sigaddset(&sa.sa_mask, m);
		if (sigaction(sig, &sa, NULL))
			die("sigaction");
	}
	struct sigaction usr1 = {.sa_handler = on_usr1, .sa_flags = SA_RESTART};
	if (sigaction(SIGUSR1, &usr1, NULL))
		die("sigaction");
	if (strcmp(argv[1], "block") == 0) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGTRAP);
		if (sigprocmask(SIG_BLOCK, &set, NULL))
			die("sigprocmask");
	} else if (strcmp(argv[1], "ignore") == 0) {
		if (signal(SIGTRAP, SIG_IGN) == SIG_ERR)
			die("signal");
	} else if (strcmp(argv[1], "handle") == 0) {
		struct sigaction trap = {.sa_sigaction = on_trap, .sa_flags = SA_SIGINFO | SA_RESTART};
		if (sigaction(SIGTRAP, &trap, NULL))
			die("sigaction");
	} else if (strcmp(argv[1], "plain") != 0) {
		return 2;
	}
	say("ready");
	for (unsigned long tick = 1;; tick++) {
		say("tick %lu", tick);
		msleep(20);
	}
}
