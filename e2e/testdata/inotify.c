/* inotify: watches a directory (argv[1]) and a file in it, with a gap in
 * the watch descriptors (a watch added and removed in between), and
 * reports every event as "event WD MASK NAME". "ready" once set up.
 * The watch descriptors must survive a dump and restore. */
#include "common.h"
#include <sys/inotify.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		say("usage: inotify DIR");
		return 2;
	}
	int fd = inotify_init1(IN_CLOEXEC);
	char path[4096];
	snprintf(path, sizeof path, "%s/watched", argv[1]);
	close(open(path, O_CREAT | O_WRONLY, 0644));
	int w1 = inotify_add_watch(fd, argv[1], IN_CREATE | IN_DELETE);
	int gap = inotify_add_watch(fd, path, IN_OPEN);
	inotify_rm_watch(fd, gap);
	int w2 = inotify_add_watch(fd, path, IN_MODIFY);
	if (fd < 0 || w1 < 0 || w2 < 0) {
		say("FAIL inotify: %s", strerror(errno));
		return 1;
	}
	say("ready dir=%d file=%d", w1, w2);
	char buf[4096] __attribute__((aligned(8)));
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			say("FAIL read: %s", strerror(errno));
			return 1;
		}
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *e = (struct inotify_event *)p;
			if (e->mask & IN_IGNORED) {
				p += sizeof *e + e->len;
				continue;
			}
			say("event %d %#x %s", e->wd, e->mask, e->len ? e->name : "-");
			p += sizeof *e + e->len;
		}
	}
}
