/* threads: three worker threads count, each under its own mutex, while the
 * main thread logs "tick N c1 c2 c3" and a checksum of a shared buffer the
 * workers fill. Lines: "ready pid=P tids=A,B,C", then ticks. */
#include "common.h"
#include <pthread.h>

#define NW 3
static pthread_mutex_t mu[NW] = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER};
static unsigned long count[NW];
static pid_t tids[NW];
static volatile int started;

static void *worker(void *arg)
{
	long i = (long)arg;
	tids[i] = gettid();
	__atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
	for (;;) {
		pthread_mutex_lock(&mu[i]);
		count[i]++;
		pthread_mutex_unlock(&mu[i]);
		msleep(5 + i);
	}
	return NULL;
}

int main(void)
{
	pthread_t th[NW];
	for (long i = 0; i < NW; i++)
		if (pthread_create(&th[i], NULL, worker, (void *)i))
			die("pthread_create");
	while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < NW)
		msleep(1);
	say("ready pid=%d tids=%d,%d,%d", getpid(), tids[0], tids[1], tids[2]);
	for (unsigned long tick = 1;; tick++) {
		unsigned long c[NW];
		for (int i = 0; i < NW; i++) {
			pthread_mutex_lock(&mu[i]);
			c[i] = count[i];
			pthread_mutex_unlock(&mu[i]);
		}
		say("tick %lu %lu %lu %lu", tick, c[0], c[1], c[2]);
		msleep(20);
	}
}
