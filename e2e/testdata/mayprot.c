/* mayprot: shared file mappings mapped read-only, whose later mprotect
 * to read-write works or fails by how the file was opened.
 *
 *   mayprot DIR TRIGGER
 *
 * rw: DIR/rw opened O_RDWR, mapped MAP_SHARED PROT_READ (VM_MAYWRITE).
 * ro: DIR/ro opened O_RDONLY, mapped the same (no VM_MAYWRITE).
 * mro: a memfd reopened read-only through /proc/self/fd, mapped the same.
 * The fds are closed. Logs "ready rw=A ro=B mro=C" (hex), then "tick N".
 * Once the file TRIGGER exists: "mprotect rw=R ro=R mro=R" (0 or the
 * errno), and if rw worked, writes "X" through it. */
#include "common.h"

static char *map(const char *path, int flags, size_t len)
{
	int fd = open(path, flags);
	if (fd < 0)
		die(path);
	char *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		die("mmap");
	close(fd);
	return p;
}

static int try_rw(char *p, size_t len)
{
	return mprotect(p, len, PROT_READ | PROT_WRITE) ? errno : 0;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	long pg = sysconf(_SC_PAGESIZE);
	char path[4096];
	char buf[4096];
	memset(buf, 'a', sizeof buf);
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof path, "%s/%s", argv[1], i ? "ro" : "rw");
		int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
		if (fd < 0 || write(fd, buf, sizeof buf) != (ssize_t)sizeof buf)
			die("create");
		close(fd);
	}
	snprintf(path, sizeof path, "%s/rw", argv[1]);
	char *rw = map(path, O_RDWR, pg);
	snprintf(path, sizeof path, "%s/ro", argv[1]);
	char *ro = map(path, O_RDONLY, pg);
	int mfd = memfd_create("mro", 0);
	if (mfd < 0 || write(mfd, buf, sizeof buf) != (ssize_t)sizeof buf)
		die("memfd");
	snprintf(path, sizeof path, "/proc/self/fd/%d", mfd);
	char *mro = map(path, O_RDONLY, pg);
	close(mfd);

	say("ready rw=%lx ro=%lx mro=%lx", (unsigned long)rw, (unsigned long)ro, (unsigned long)mro);
	for (unsigned long tick = 1;; tick++) {
		if (access(argv[2], F_OK) == 0) {
			int r1 = try_rw(rw, pg), r2 = try_rw(ro, pg), r3 = try_rw(mro, pg);
			if (!r1)
				rw[0] = 'X';
			say("mprotect rw=%d ro=%d mro=%d", r1, r2, r3);
			for (;;) {
				say("tick %lu", tick++);
				msleep(30);
			}
		}
		say("tick %lu", tick);
		msleep(30);
	}
}
