/* appender: a process that writes a log, as a service does.
 *
 *   appender FILE
 *
 * FILE is opened O_WRONLY|O_APPEND|O_CREAT; every 10 ms the process
 * appends "line N\n" to it, N counting from 1 on.
 *
 * Lines (stdout): "ready pid=P", then "tick N" per line appended. */
#include "common.h"

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0)
		die("open");
	say("ready pid=%d", getpid());
	for (unsigned long n = 1;; n++) {
		char line[64];
		int len = snprintf(line, sizeof line, "line %lu\n", n);
		if (write(fd, line, len) != len)
			die("write");
		say("tick %lu", n);
		msleep(10);
	}
}
