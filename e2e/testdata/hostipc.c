/* hostipc: a process that uses a System V semaphore set or message queue
 * of the host's IPC namespace, made by the test.
 *
 *   hostipc sem ID | msg ID
 *
 * sem: a semop(+1) on semaphore 0 of set ID; msg: a msgsnd of one message
 * to queue ID. Then "ready" and "tick N" every 20 ms. */
#include "common.h"
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>

int main(int argc, char **argv)
{
	if (argc != 3)
		die("usage: hostipc sem|msg ID");
	int id = atoi(argv[2]);
	if (strcmp(argv[1], "sem") == 0) {
		struct sembuf op = {.sem_num = 0, .sem_op = 1};
		if (semop(id, &op, 1) < 0)
			die("semop");
	} else {
		struct {
			long type;
			char text[8];
		} m = {1, "hello"};
		if (msgsnd(id, &m, sizeof m.text, 0) < 0)
			die("msgsnd");
	}
	say("ready");
	for (unsigned long tick = 1;; tick++) {
		say("tick %lu", tick);
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}
