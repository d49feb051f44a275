/* appender: a process that writes a log, as a service does.
 *
 *   appender [-m MiB] [-r ROTATED] FILE
 *
 * FILE is opened O_WRONLY|O_APPEND|O_CREAT; every 10 ms the process
 * appends "line N\n" to it, N counting from 1 on. -m MiB: it also holds
 * a heap of that size and rewrites 1 MiB of it each tick, in turn, so
 * that pre-copy takes several rounds. -r ROTATED: on SIGUSR1 it closes
 * FILE and appends to ROTATED (opened so) from then on, as a log is
 * rotated.
 *
 * Lines (stdout): "ready pid=P", then "tick N" per line appended,
 * "rotated" once it writes to ROTATED. */
#include "common.h"

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

int main(int argc, char **argv)
{
	long mib = 0;
	const char *rotated = NULL;
	int opt;
	while ((opt = getopt(argc, argv, "m:r:")) != -1) {
		if (opt == 'm')
			mib = atol(optarg);
		else if (opt == 'r')
			rotated = optarg;
		else
			return 2;
	}
	signal(SIGUSR1, on_usr1);
	if (optind != argc - 1)
		return 2;
	int fd = open(argv[optind], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0)
		die("open");
	char *heap = NULL;
	if (mib > 0) {
		heap = malloc(mib << 20);
		if (!heap)
			die("malloc");
		memset(heap, 1, mib << 20);
	}
	say("ready pid=%d", getpid());
	for (unsigned long n = 1;; n++) {
		if (got_usr1 && rotated) {
			got_usr1 = 0;
			close(fd);
			fd = open(rotated, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
			if (fd < 0)
				die("open rotated");
			rotated = NULL;
			say("rotated");
		}
		if (heap) {
			char *p = heap + ((n % mib) << 20);
			for (long off = 0; off < 1 << 20; off += 4096)
				p[off] = (char)n;
		}
		char line[64];
		int len = snprintf(line, sizeof line, "line %lu\n", n);
		if (write(fd, line, len) != len)
			die("write");
		say("tick %lu", n);
		msleep(10);
	}
}
