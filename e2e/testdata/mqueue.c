/* mqueue: a process that holds a POSIX message queue open.
 *
 * It opens a queue named after its PID (removed from the mqueue file
 * system at once: it lasts while the fd is open), logs "ready", then
 * "tick N" every 10 ms. */
#include "common.h"
#include <mqueue.h>

int main(void)
{
	char name[64];
	snprintf(name, sizeof name, "/migrate-e2e-%d", getpid());
	mqd_t q = mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, NULL);
	if (q == (mqd_t)-1)
		die("mq_open");
	if (mq_unlink(name))
		die("mq_unlink");
	say("ready");
	for (long i = 1;; i++) {
		say("tick %ld", i);
		msleep(10);
	}
}
