/* filetree: a parent and its children sharing one open file description
 * of a regular file (opened by the parent before the forks: one offset,
 * one set of status flags, the flock and OFD locks of one description)
 * and the write end of a pipe whose read end the parent keeps.
 *
 *   filetree FILE N
 *
 * The parent writes "parent\n" to FILE, takes a shared flock and an OFD
 * read lock through it and forks N children. On SIGUSR1 a process writes
 * its name and a newline at the shared offset and logs "wrote NAME
 * pos=P" (the offset after its write); a child also writes a byte, its
 * number's digit, into the pipe, which the parent reads and logs: "pipe
 * got=D".
 *
 * Lines: "ready pid=P children=C1,C2,...", then the parent's "tick N"
 * every 20 ms. */
#include "common.h"
#include <sys/file.h>
#include <sys/wait.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

static void wrote(int fd, const char *name)
{
	char line[64];
	int n = snprintf(line, sizeof line, "%s\n", name);
	if (write(fd, line, n) != n)
		die("write");
	say("wrote %s pos=%ld", name, (long)lseek(fd, 0, SEEK_CUR));
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	int n = atoi(argv[2]);
	if (n < 1 || n > 9)
		return 2;
	int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC | O_NONBLOCK, 0600);
	if (fd < 0)
		die("open");
	if (write(fd, "parent\n", 7) != 7)
		die("write");
	if (flock(fd, LOCK_SH))
		die("flock");
	struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
	if (fcntl(fd, F_OFD_SETLK, &fl))
		die("F_OFD_SETLK");
	int p[2];
	if (pipe(p))
		die("pipe");
	signal(SIGUSR1, on_usr1);
	char kids[128] = "";
	for (int i = 1; i <= n; i++) {
		pid_t kid = fork();
		if (kid < 0)
			die("fork");
		if (kid == 0) {
			close(p[0]);
			char name[32];
			snprintf(name, sizeof name, "child-%d", i);
			for (;;) {
				if (got_usr1) {
					got_usr1 = 0;
					wrote(fd, name);
					char d = '0' + i;
					if (write(p[1], &d, 1) != 1)
						die("write pipe");
				}
				msleep(20);
			}
		}
		snprintf(kids + strlen(kids), sizeof kids - strlen(kids), "%s%d", i > 1 ? "," : "", kid);
	}
	close(p[1]);
	if (fcntl(p[0], F_SETFL, O_NONBLOCK))
		die("F_SETFL");
	say("ready pid=%d children=%s", getpid(), kids);
	for (unsigned long tick = 1;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			wrote(fd, "parent-again");
		}
		char d;
		while (read(p[0], &d, 1) == 1)
			say("pipe got=%c", d);
		say("tick %lu", tick);
		msleep(20);
	}
}
