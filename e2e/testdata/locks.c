/* locks: holds one kind of file lock on FILE and counts.
 *
 *   locks posix|flock|ofd|lease FILE
 *
 * posix: fcntl F_SETLK write lock on bytes 10-19; flock: LOCK_EX; ofd:
 * F_OFD_SETLK read lock on bytes 0-99; lease: F_SETLEASE read lease (the
 * file opened read-only, owned by the caller); all: on three open file
 * descriptions of FILE, POSIX write lock on bytes 10-19 and read lock on
 * 40-49 (fd N), flock LOCK_SH (fd N+1), OFD write lock on 200-299 (fd N+2).
 * Then "ready pid=P fd=N" and "tick N" every 10 ms. */
#include "common.h"
#include <sys/file.h>

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	const char *kind = argv[1];
	int lease = !strcmp(kind, "lease");
	int fd = open(argv[2], lease || !strcmp(kind, "ofd") ? O_RDONLY : O_RDWR);
	if (fd < 0)
		die("open");
	if (!strcmp(kind, "posix")) {
		struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 10};
		if (fcntl(fd, F_SETLK, &fl))
			die("F_SETLK");
	} else if (!strcmp(kind, "flock")) {
		if (flock(fd, LOCK_EX))
			die("flock");
	} else if (!strcmp(kind, "ofd")) {
		struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
		if (fcntl(fd, F_OFD_SETLK, &fl))
			die("F_OFD_SETLK");
	} else if (!strcmp(kind, "all")) {
		struct flock w = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 10};
		struct flock r = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 40, .l_len = 10};
		if (fcntl(fd, F_SETLK, &w) || fcntl(fd, F_SETLK, &r))
			die("F_SETLK");
		int f2 = open(argv[2], O_RDONLY), f3 = open(argv[2], O_RDWR);
		if (f2 != fd + 1 || f3 != fd + 2)
			die("open");
		if (flock(f2, LOCK_SH))
			die("flock");
		struct flock o = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 200, .l_len = 100};
		if (fcntl(f3, F_OFD_SETLK, &o))
			die("F_OFD_SETLK");
	} else if (lease) {
		if (fcntl(fd, F_SETLEASE, F_RDLCK))
			die("F_SETLEASE");
	} else {
		return 2;
	}
	say("ready pid=%d fd=%d", getpid(), fd);
	for (int i = 1;; i++) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
		say("tick %d", i);
	}
}
