/* container: the init of a container (run by `unshare --pid --fork --uts
 * --ipc container NAME`), with a child, a host name, a System V semaphore
 * set and a message queue of its own.
 *
 *   container NAME [shm]
 *
 * As PID 1 of its PID namespace it leads a session of its own, sets the
 * host name NAME and its IPC namespace's msgmax to 4096, makes semaphore set S (key 0x5e4a, 3 semaphores, mode
 * 0640, values 1 5 7) and queue Q (key 0x3e55, mode 0620) with three
 * messages (types 1 2 3: "alpha", "beta", "gamma"), then forks a child
 * (PID 2) that leads its own process group and takes and gives back
 * semaphore 0 every millisecond. It logs "ready pid=P child=C sem=ID
 * msg=ID" (its PID and the child's, as it sees them: 1 and 2), then every
 * 10 ms "tick N ok", or "tick N bad WHAT" when what it checks differs:
 * its PID, its child, its host name, msgmax, the semaphores' values (the child
 * holds none between its rounds), the number of messages, its process
 * group and session. SIGUSR1: "report host=H pid=P child=C pgid=G sid=S
 * sems=A,B,C msgs=N". SIGUSR2: "msgs" with each message taken (removed)
 * from Q as TYPE:TEXT. SIGTERM: it kills the child and exits. With shm,
 * a System V shared memory segment (key 0x5a5a, 8192 bytes, mode 0600)
 * of the namespace is attached before the fork, by both: the child
 * echoes into its second page the counter the init writes in its first,
 * and a tick whose echo does not come within a second is "bad shm". */
#include "common.h"
#include <sys/shm.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/wait.h>

static volatile sig_atomic_t got_usr1, got_usr2, got_term;
static void on_usr1(int s) { (void)s; got_usr1 = 1; }
static void on_usr2(int s) { (void)s; got_usr2 = 1; }
static void on_term(int s) { (void)s; got_term = 1; }

union semun {
	int val;
	struct semid_ds *buf;
	unsigned short *array;
};

struct msg {
	long type;
	char text[64];
};

/* msgmax reads the namespace's msgmax with msgctl(IPC_INFO), not from
 * /proc/sys: an fd held there as the container is frozen is one a restore
 * in a root pivoted into refuses (a file on the container's proc). */
static long msgmax(void)
{
	struct msginfo info;
	if (msgctl(0, IPC_INFO, (struct msqid_ds *)&info) < 0)
		return -1;
	return info.msgmax;
}

int main(int argc, char **argv)
{
	if (argc != 2 && !(argc == 3 && !strcmp(argv[2], "shm")))
		return 2;
	const char *name = argv[1];
	volatile int64_t *shm = NULL;
	if (getpid() != 1) {
		say("FAIL not the init of a PID namespace: pid %d", getpid());
		return 1;
	}
	if (setsid() < 0)
		die("setsid");
	if (sethostname(name, strlen(name)))
		die("sethostname");
	int fd = open("/proc/sys/kernel/msgmax", O_WRONLY);
	if (fd < 0 || write(fd, "4096", 4) != 4 || close(fd))
		die("msgmax");
	int sem = semget(0x5e4a, 3, IPC_CREAT | IPC_EXCL | 0640);
	if (sem < 0)
		die("semget");
	unsigned short vals[3] = {1, 5, 7};
	union semun arg = {.array = vals};
	if (semctl(sem, 0, SETALL, arg))
		die("semctl SETALL");
	int q = msgget(0x3e55, IPC_CREAT | IPC_EXCL | 0620);
	if (q < 0)
		die("msgget");
	const char *texts[3] = {"alpha", "beta", "gamma"};
	for (int i = 0; i < 3; i++) {
		struct msg m = {.type = i + 1};
		strcpy(m.text, texts[i]);
		if (msgsnd(q, &m, strlen(texts[i]), 0))
			die("msgsnd");
	}
	if (argc == 3) {
		int id = shmget(0x5a5a, 8192, IPC_CREAT | IPC_EXCL | 0600);
		if (id < 0)
			die("shmget");
		shm = shmat(id, NULL, 0);
		if (shm == (void *)-1)
			die("shmat");
	}
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		if (setpgid(0, 0))
			die("child setpgid");
		struct sembuf take = {0, -1, 0}, give = {0, 1, 0};
		for (;;) {
			if (semop(sem, &take, 1) || semop(sem, &give, 1))
				die("child semop");
			if (getppid() != 1)
				_exit(3);
			if (shm && shm[512] != shm[0])
				shm[512] = shm[0];
			msleep(1);
		}
	}
	setpgid(child, child); /* as the child does: whichever runs first */
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	signal(SIGTERM, on_term);
	say("ready pid=%d child=%d sem=%d msg=%d", getpid(), child, sem, q);
	for (long i = 1; !got_term; i++) {
		char host[65] = "";
		gethostname(host, sizeof host - 1);
		unsigned short now[3] = {0};
		union semun get = {.array = now};
		struct msqid_ds ds;
		const char *bad = NULL;
		if (shm) {
			shm[0] = i;
			int w = 0;
			while (shm[512] != i && w++ < 1000)
				msleep(1);
			if (shm[512] != i)
				bad = "shm";
		}
		if (bad)
			;
		else if (getpid() != 1)
			bad = "pid";
		else if (child != 2 || kill(child, 0))
			bad = "child";
		else if (strcmp(host, name))
			bad = "hostname";
		else if (msgmax() != 4096)
			bad = "msgmax";
		else if (semctl(sem, 0, GETALL, get) || now[1] != 5 || now[2] != 7 || now[0] > 1)
			bad = "semaphores";
		else if (msgctl(q, IPC_STAT, &ds) || ds.msg_qnum != 3)
			bad = "messages";
		else if (getpgid(0) != 1 || getsid(0) != 1 || getpgid(child) != child)
			bad = "groups";
		if (got_usr1) {
			got_usr1 = 0;
			msgctl(q, IPC_STAT, &ds);
			say("report host=%s pid=%d child=%d pgid=%d sid=%d sems=%u,%u,%u msgs=%lu", host, getpid(), child,
			    getpgid(0), getsid(0), now[0], now[1], now[2], (unsigned long)ds.msg_qnum);
		}
		if (got_usr2) {
			got_usr2 = 0;
			char line[512] = "msgs";
			struct msg m;
			ssize_t n;
			while ((n = msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT)) >= 0) {
				size_t l = strlen(line);
				snprintf(line + l, sizeof line - l, " %ld:%.*s", m.type, (int)n, m.text);
			}
			say("%s", line);
			return 0;
		}
		if (bad)
			say("tick %ld bad %s", i, bad);
		else
			say("tick %ld ok", i);
		msleep(10);
	}
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	say("bye");
	return 0;
}
