/* mntns: a process in a mount namespace of its own, as a container has.
 *
 *   mntns full|live DIR GONE BINDSRC
 *   mntns overlay|split|chroot|fifo|rotmpfs|xattr DIR
 *
 * full: unshare(CLONE_NEWNS), the caller's shared mounts slaves (the rest
 * private), then: /run/netns and
 * GONE (a tmpfs of the caller's namespace) unmounted; a tmpfs on DIR/t
 * (size=1m,mode=0750, then chmod 01770, group 5678) holding a file, a directory with a file owned by
 * 1234:5678 mode 0604, a symbolic link, a hard link, a setuid file, and a
 * tmpfs mounted on its directory inner/ (with a file); BINDSRC bound on
 * DIR/b, read-only and nosuid; a proc on DIR/p (nosuid,nodev,noexec), a
 * new devpts instance on DIR/pts, an mqueue on DIR/mq;
 * DIR/t made shared (a peer group of its own); a child that shares the
 * namespace, sleeping.
 * live: full, and /proc and /sys replaced by fresh proc and sysfs mounts
 * (those of the nodes of a cluster differ: a container mounts its own).
 * overlay: the same namespace with an overlay on DIR/o instead.
 * split: a child in a mount namespace of its own (another than its
 * parent's). chroot: the process chroots into DIR. fifo: a tmpfs on DIR
 * holding a FIFO (DIR/fifo). rotmpfs: a read-only tmpfs on DIR holding a
 * file with contents (DIR/data). xattr: a
 * tmpfs on DIR holding a file with an extended attribute (DIR/x).
 *
 * Lines: "ready pid=P child=C" (C 0 without a child); on SIGUSR1 "check ..." with each part "ok" or
 * what went wrong. */
#include "common.h"
#include <sched.h>
#include <sys/mount.h>
#include <sys/vfs.h>
#include <sys/xattr.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

static char result[4096];

static void fail(const char *part, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	snprintf(result + strlen(result), sizeof result - strlen(result), " %s=FAIL(%s)", part, buf);
}

static void ok(const char *part)
{
	snprintf(result + strlen(result), sizeof result - strlen(result), " %s=ok", part);
}

static char *path(const char *dir, const char *name)
{
	static char bufs[8][4096];
	static int n;
	char *b = bufs[n++ % 8];
	snprintf(b, 4096, "%s/%s", dir, name);
	return b;
}

static void put(const char *p, const char *data, mode_t mode)
{
	int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (fd < 0 || write(fd, data, strlen(data)) != (ssize_t)strlen(data) || fchmod(fd, mode) || close(fd))
		die(p);
}

static int contents(const char *p, const char *want)
{
	char buf[256];
	int fd = open(p, O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n < 0)
		return 0;
	buf[n] = 0;
	return !strcmp(buf, want);
}

static void check(const char *dir, const char *gone)
{
	struct stat a, h, s, d, g, gp;
	char buf[256];
	result[0] = 0;
	if (contents(path(dir, "t/a.txt"), "alpha\n") && contents(path(dir, "t/sub/b"), "beta\n") &&
	    contents(path(dir, "t/inner/c"), "gamma\n"))
		ok("tmpfs");
	else
		fail("tmpfs", "contents differ");
	if (stat(path(dir, "t/sub/b"), &s) || (s.st_mode & 07777) != 0604 || s.st_uid != 1234 || s.st_gid != 5678)
		fail("owner", "sub/b mode %o uid %d gid %d", s.st_mode & 07777, (int)s.st_uid, (int)s.st_gid);
	else
		ok("owner");
	ssize_t n = readlink(path(dir, "t/ln"), buf, sizeof buf - 1);
	if (n != 5 || memcmp(buf, "a.txt", 5))
		fail("symlink", "target %.*s", (int)(n > 0 ? n : 0), buf);
	else
		ok("symlink");
	if (stat(path(dir, "t/a.txt"), &a) || stat(path(dir, "t/hard"), &h) || a.st_ino != h.st_ino || a.st_nlink != 2)
		fail("hardlink", "inodes %lu %lu nlink %lu", (unsigned long)a.st_ino, (unsigned long)h.st_ino, (unsigned long)a.st_nlink);
	else
		ok("hardlink");
	if (stat(path(dir, "t/suid"), &s) || (s.st_mode & 07777) != 04755)
		fail("setuid", "mode %o", s.st_mode & 07777);
	else
		ok("setuid");
	if (stat(path(dir, "t"), &d) || (d.st_mode & 07777) != 01770 || d.st_gid != 5678 || a.st_mtime != 1000000000)
		fail("modes", "t mode %o gid %d, a.txt mtime %ld", d.st_mode & 07777, (int)d.st_gid, (long)a.st_mtime);
	else
		ok("modes");
	int fd = open(path(dir, "b/new"), O_WRONLY | O_CREAT, 0600);
	if (contents(path(dir, "b/file"), "host\n") && fd < 0 && errno == EROFS)
		ok("bind");
	else
		fail("bind", "fd %d errno %d", fd, errno);
	if (fd >= 0)
		close(fd);
	n = readlink(path(dir, "p/self"), buf, sizeof buf - 1);
	if (n > 0) {
		buf[n] = 0;
		if (atoi(buf) == getpid())
			ok("proc");
		else
			fail("proc", "self is %s", buf);
	} else
		fail("proc", "readlink: %s", strerror(errno));
	struct statfs pts, mq;
	if (!statfs(path(dir, "pts"), &pts) && pts.f_type == 0x1cd1 && !statfs(path(dir, "mq"), &mq) && mq.f_type == 0x19800202)
		ok("virtual");
	else
		fail("virtual", "devpts or mqueue missing");
	char parent[4096];
	snprintf(parent, sizeof parent, "%s/..", gone);
	if (!stat(gone, &g) && !stat(parent, &gp) && g.st_dev == gp.st_dev)
		ok("unmounted");
	else
		fail("unmounted", "%s is a mount point", gone);
	say("check%s", result);
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	const char *dir = argv[2];
	signal(SIGUSR1, on_usr1);
	if (unshare(CLONE_NEWNS))
		die("unshare");
	/* Slaves of the shared mounts of the caller's namespace (DIR/../shared
	 * in the tests), the rest private. */
	if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL))
		die("make slave");
	umount2("/run/netns", MNT_DETACH); /* other tests' network namespaces come and go */
	if (!strcmp(argv[1], "split")) {
		pid_t child = fork();
		if (child < 0)
			die("fork");
		if (child == 0) {
			if (unshare(CLONE_NEWNS))
				die("unshare child");
			for (;;)
				pause();
		}
		for (;;) {
			char ns[64] = "", cns[64] = "", p[64];
			snprintf(p, sizeof p, "/proc/%d/ns/mnt", (int)child);
			if (readlink("/proc/self/ns/mnt", ns, sizeof ns - 1) > 0 && readlink(p, cns, sizeof cns - 1) > 0 && strcmp(ns, cns))
				break;
			msleep(1);
		}
		say("ready pid=%d child=%d", getpid(), (int)child);
		for (;;)
			pause();
	}
	if (!strcmp(argv[1], "fifo") || !strcmp(argv[1], "rotmpfs") || !strcmp(argv[1], "xattr")) {
		if (mount("odd", dir, "tmpfs", 0, "size=64k"))
			die("mount tmpfs");
		if (!strcmp(argv[1], "fifo") && mkfifo(path(dir, "fifo"), 0600))
			die("mkfifo");
		if (!strcmp(argv[1], "rotmpfs"))
			put(path(dir, "data"), "x\n", 0644);
		if (!strcmp(argv[1], "xattr")) {
			put(path(dir, "x"), "x\n", 0644);
			if (setxattr(path(dir, "x"), "user.test", "1", 1, 0))
				die("setxattr");
		}
		if (!strcmp(argv[1], "rotmpfs") && mount(NULL, dir, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL))
			die("read-only");
		say("ready pid=%d child=0", getpid());
		for (;;)
			pause();
	}
	if (!strcmp(argv[1], "chroot")) {
		if (chroot(dir) || chdir("/"))
			die("chroot");
		say("ready pid=%d child=0", getpid());
		for (;;)
			pause();
	}
	if (!strcmp(argv[1], "overlay")) {
		char opts[4096];
		mkdir(path(dir, "lower"), 0755);
		mkdir(path(dir, "upper"), 0755);
		mkdir(path(dir, "work"), 0755);
		mkdir(path(dir, "o"), 0755);
		snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s", path(dir, "lower"), path(dir, "upper"), path(dir, "work"));
		if (mount("overlay", path(dir, "o"), "overlay", 0, opts))
			die("mount overlay");
		say("ready pid=%d child=0", getpid());
		for (;;)
			pause();
	}
	if (argc != 5 || (strcmp(argv[1], "full") && strcmp(argv[1], "live")))
		return 2;
	if (!strcmp(argv[1], "live")) {
		while (!umount2("/proc", MNT_DETACH))
			;
		while (!umount2("/sys", MNT_DETACH))
			;
		if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) ||
		    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
			die("mount proc and sysfs");
	}
	const char *gone = argv[3], *bindsrc = argv[4];
	if (umount2(gone, 0))
		die("umount gone");
	if (mount("box", path(dir, "t"), "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0750"))
		die("mount tmpfs");
	put(path(dir, "t/a.txt"), "alpha\n", 0644);
	if (mkdir(path(dir, "t/sub"), 0711) || mkdir(path(dir, "t/inner"), 0700))
		die("mkdir");
	put(path(dir, "t/sub/b"), "beta\n", 0604);
	if (chown(path(dir, "t/sub/b"), 1234, 5678) || chmod(path(dir, "t/sub/b"), 0604))
		die("chown");
	put(path(dir, "t/suid"), "#!/bin/sh\n", 04755);
	if (symlink("a.txt", path(dir, "t/ln")) || link(path(dir, "t/a.txt"), path(dir, "t/hard")))
		die("links");
	struct timespec ts[2] = {{1000000000, 0}, {1000000000, 0}};
	if (utimensat(AT_FDCWD, path(dir, "t/a.txt"), ts, 0))
		die("utimensat");
	if (mount("inner", path(dir, "t/inner"), "tmpfs", 0, "size=64k"))
		die("mount inner");
	put(path(dir, "t/inner/c"), "gamma\n", 0644);
	if (chown(path(dir, "t"), 0, 5678) || chmod(path(dir, "t"), 01770))
		die("chmod t");
	if (mount(bindsrc, path(dir, "b"), NULL, MS_BIND, NULL) ||
	    mount(NULL, path(dir, "b"), NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID, NULL))
		die("bind");
	if (mount("proc", path(dir, "p"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
		die("mount proc");
	if (mount("devpts", path(dir, "pts"), "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,mode=620,ptmxmode=666") ||
	    mount("mqueue", path(dir, "mq"), "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
		die("mount devpts, mqueue");
	if (mount(NULL, path(dir, "t"), NULL, MS_SHARED, NULL))
		die("make shared");
	pid_t child = 0;
	if (!strcmp(argv[1], "full")) {
		child = fork();
		if (child < 0)
			die("fork");
		if (child == 0) {
			for (;;)
				msleep(20);
		}
	}
	say("ready pid=%d child=%d", getpid(), (int)child);
	for (;;) {
		msleep(20);
		if (got_usr1) {
			got_usr1 = 0;
			check(dir, gone);
		}
	}
}
