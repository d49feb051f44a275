/* prog_timerfd: timerfds that a program reads only now and then, as an
 * event loop does when it is busy elsewhere.
 *
 *   prog_timerfd
 *
 * A periodic timerfd (CLOCK_MONOTONIC, every 50 ms) that is read only on
 * SIGUSR1, so that it has expired, unread, most of the time; and a one-shot
 * timerfd armed for 3600 s.
 *
 * Lines: "ready pid=P periodic=FD oneshot=FD", "tick N" every 100 ms; on
 * SIGUSR1 "read ticks=N ms=M periodic=V,I oneshot=V,I" where N is what a
 * read of the periodic timer returned (0 for EAGAIN), M the milliseconds
 * since the previous read (or since it was armed), and V,I the value and
 * interval timerfd_gettime gives, in ms. */
#include "common.h"
#include <sys/timerfd.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t ms(struct timespec t) { return t.tv_sec * 1000 + t.tv_nsec / 1000000; }

int main(void)
{
	int per = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	int one = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (per < 0 || one < 0)
		die("timerfd_create");
	struct itimerspec p = {.it_interval = {0, 50000000}, .it_value = {0, 50000000}};
	struct itimerspec o = {.it_value = {3600, 0}};
	if (timerfd_settime(per, 0, &p, NULL) || timerfd_settime(one, 0, &o, NULL))
		die("timerfd_settime");
	int64_t last = now_ms();
	signal(SIGUSR1, on_usr1);
	say("ready pid=%d periodic=%d oneshot=%d", getpid(), per, one);
	for (unsigned long tick = 1;; tick++) {
		msleep(100);
		if (got_usr1) {
			got_usr1 = 0;
			uint64_t n = 0;
			if (read(per, &n, 8) != 8 && errno != EAGAIN)
				die("read timerfd");
			int64_t t = now_ms();
			struct itimerspec gp, go;
			if (timerfd_gettime(per, &gp) || timerfd_gettime(one, &go))
				die("timerfd_gettime");
			say("read ticks=%llu ms=%lld periodic=%lld,%lld oneshot=%lld,%lld", (unsigned long long)n,
			    (long long)(t - last), (long long)ms(gp.it_value), (long long)ms(gp.it_interval),
			    (long long)ms(go.it_value), (long long)ms(go.it_interval));
			last = t;
		}
		say("tick %lu", tick);
	}
}
