/* filestate: sets up one kind of file state, says "ready", and on SIGUSR1
 * prints one "check ..." line describing that state as it sees it now.
 *
 *   filestate packet        a packet-mode pipe (pipe2 O_DIRECT) holding the
 *                           packets "alpha", "be", "gamma-gamma"; check reads
 *                           the first with a 3-byte buffer (the rest of a
 *                           packet is dropped) and the others whole, then
 *                           writes two packets and reads them back.
 *   filestate packet-empty  the same pipe with nothing queued.
 *   filestate packet-mixed  a pipe holding stream data "abc" and after it
 *                           the packet "de".
 *   filestate sparse DIR    a deleted 1 GiB file holding "head" at 0 and
 *                           "mid" at 256 MiB, the rest holes, and a 1 GiB
 *                           memfd holding "memfd" at 64 MiB; check prints
 *                           a "memfd ..." line first.
 *   filestate wronly DIR    a deleted file open only for writing.
 *   filestate owner         a pipe with O_ASYNC, F_SETOWN_EX (its own PID)
 *                           and F_SETSIG SIGUSR2 on its read end.
 *   filestate owner-pgrp    the same, the owner its process group.
 *   filestate sharedfd      a child made by clone(CLONE_FILES) without
 *                           CLONE_THREAD: parent and child share one fd table.
 *   filestate unsharedfd    a thread that unshared its fd table.
 *   filestate times RW MAPPED NOATIME
 *                           RW open O_RDWR and mapped shared, MAPPED mapped
 *                           private with its first page written, NOATIME
 *                           open O_RDONLY|O_NOATIME.
 *   filestate pty           holds a pty master and its slave.
 *   filestate ctty          a session leader whose controlling terminal is
 *                           a pty it holds. */
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

static volatile sig_atomic_t usr1;
static void on_usr1(int sig) { (void)sig; usr1 = 1; }

static void wait_usr1(void)
{
	while (!usr1)
		msleep(20);
	usr1 = 0;
}

static int flag(int fd, int f)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		die("F_GETFL");
	return (fl & f) != 0;
}

static void packet(int queued)
{
	int p[2];
	if (queued < 0) {
		/* Stream data, then a packet after it. */
		if (pipe(p) || write(p[1], "abc", 3) != 3 ||
		    fcntl(p[1], F_SETFL, O_DIRECT) || write(p[1], "de", 2) != 2)
			die("mixed pipe");
	} else if (pipe2(p, O_DIRECT))
		die("pipe2 O_DIRECT");
	if (queued > 0) {
		const char *pk[] = {"alpha", "be", "gamma-gamma"};
		for (int i = 0; i < 3; i++)
			if (write(p[1], pk[i], strlen(pk[i])) != (ssize_t)strlen(pk[i]))
				die("write packet");
	}
	say("ready pid=%d", getpid());
	wait_usr1();
	char got[128] = "", buf[64];
	fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
	for (int i = 0;; i++) {
		ssize_t n = read(p[0], buf, i == 0 ? 3 : sizeof buf);
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0)
			die("read packet");
		strcat(got, "|");
		strncat(got, buf, n);
	}
	if (write(p[1], "xy", 2) != 2 || write(p[1], "z", 1) != 1)
		die("write new packets");
	ssize_t a = read(p[0], buf, sizeof buf), b = read(p[0], buf, sizeof buf);
	say("check direct=%d,%d packets=%s new=%zd,%zd", flag(p[0], O_DIRECT), flag(p[1], O_DIRECT), got, a, b);
}

static void sparse(const char *dir)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/sparse", dir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		die("open sparse");
	if (pwrite(fd, "head", 4, 0) != 4 || pwrite(fd, "mid", 3, 256L << 20) != 3)
		die("pwrite");
	if (ftruncate(fd, 1L << 30))
		die("ftruncate");
	if (unlink(path))
		die("unlink");
	int mfd = memfd_create("sparse", MFD_CLOEXEC);
	if (mfd < 0 || pwrite(mfd, "memfd", 5, 64L << 20) != 5 || ftruncate(mfd, 1L << 30))
		die("memfd");
	say("ready pid=%d fd=%d", getpid(), fd);
	wait_usr1();
	struct stat mst;
	if (fstat(mfd, &mst))
		die("fstat memfd");
	char mdata[16] = "";
	if (pread(mfd, mdata, 5, 64L << 20) != 5)
		die("pread memfd");
	off_t md = lseek(mfd, 0, SEEK_DATA), mh = lseek(mfd, md, SEEK_HOLE);
	say("memfd size=%lld data=%lld-%lld content=%s allocated_kib=%lld", (long long)mst.st_size, (long long)md, (long long)mh, mdata, (long long)mst.st_blocks / 2);
	struct stat st;
	if (fstat(fd, &st))
		die("fstat");
	char data[256] = "";
	for (off_t off = 0;;) {
		off_t d = lseek(fd, off, SEEK_DATA);
		if (d < 0)
			break;
		off_t h = lseek(fd, d, SEEK_HOLE);
		snprintf(data + strlen(data), sizeof data - strlen(data), "%s%lld-%lld", *data ? "," : "", (long long)d, (long long)h);
		off = h;
	}
	char head[5] = "", mid[4] = "";
	if (pread(fd, head, 4, 0) != 4 || pread(fd, mid, 3, 256L << 20) != 3)
		die("pread");
	say("check size=%lld data=%s head=%s mid=%s allocated_kib=%lld", (long long)st.st_size, data, head, mid, (long long)st.st_blocks / 2);
}

static void wronly(const char *dir)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/wronly", dir);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		die("open wronly");
	if (write(fd, "written-", 8) != 8)
		die("write");
	if (unlink(path))
		die("unlink");
	say("ready pid=%d fd=%d", getpid(), fd);
	wait_usr1();
	if (write(fd, "after", 5) != 5)
		die("write after");
	char self[64], buf[64] = "";
	snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
	int r = open(self, O_RDONLY);
	if (r < 0 || pread(r, buf, sizeof buf - 1, 0) < 0)
		die("read back");
	say("check wronly=%d pos=%lld content=%s", (fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY, (long long)lseek(fd, 0, SEEK_CUR), buf);
}

static volatile sig_atomic_t usr2;
static void on_usr2(int sig) { (void)sig; usr2++; }

static void owner(int pgrp)
{
	int p[2];
	if (pipe(p))
		die("pipe");
	struct sigaction sa = {0};
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	struct f_owner_ex own = {pgrp ? F_OWNER_PGRP : F_OWNER_PID, pgrp ? getpgrp() : getpid()};
	if (fcntl(p[0], F_SETOWN_EX, &own) || fcntl(p[0], F_SETSIG, SIGUSR2) ||
	    fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_ASYNC))
		die("F_SETOWN_EX/F_SETSIG/O_ASYNC");
	say("ready pid=%d", getpid());
	wait_usr1();
	struct f_owner_ex got = {0};
	if (fcntl(p[0], F_GETOWN_EX, &got))
		die("F_GETOWN_EX");
	if (write(p[1], "x", 1) != 1)
		die("write");
	for (int i = 0; i < 100 && !usr2; i++)
		msleep(10);
	say("check owner=%d:%d self=%d sig=%d async=%d sigio=%d", got.type, got.pid, got.pid == getpid(),
	    fcntl(p[0], F_GETSIG), flag(p[0], O_ASYNC), usr2 > 0);
}

static int child_fn(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return 0;
}

static void sharedfd(void)
{
	static char stack[64 << 10];
	pid_t kid = clone(child_fn, stack + sizeof stack, CLONE_FILES | SIGCHLD, NULL);
	if (kid < 0)
		die("clone CLONE_FILES");
	say("ready pid=%d child=%d", getpid(), kid);
	wait_usr1();
	say("check");
}

static volatile int unshared;

static void *unshare_thread(void *arg)
{
	(void)arg;
	if (unshare(CLONE_FILES))
		die("unshare CLONE_FILES");
	unshared = 1;
	for (;;)
		pause();
	return NULL;
}

static void unsharedfd(void)
{
	pthread_t th;
	if (pthread_create(&th, NULL, unshare_thread, NULL))
		die("pthread_create");
	while (!unshared)
		msleep(10);
	say("ready pid=%d", getpid());
	wait_usr1();
	say("check");
}

static void times_(char **files)
{
	int rw = open(files[0], O_RDWR);
	int mf = open(files[1], O_RDWR);
	int na = open(files[2], O_RDONLY | O_NOATIME);
	if (rw < 0 || mf < 0 || na < 0)
		die("open");
	char *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0);
	char *priv = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE, mf, 0);
	if (shared == MAP_FAILED || priv == MAP_FAILED)
		die("mmap");
	close(mf);
	priv[0] = 'P'; /* a private copy of the first page; the second is the file's */
	say("ready pid=%d first=%c%c", getpid(), shared[0], priv[4096]);
	wait_usr1();
	say("check shared=%c private=%c,%c noatime=%d", shared[0], priv[0], priv[4096], flag(na, O_NOATIME));
}

static void pty(int ctty)
{
	if (ctty && setsid() < 0)
		die("setsid");
	int m = posix_openpt(O_RDWR | O_NOCTTY);
	if (m < 0 || grantpt(m) || unlockpt(m))
		die("posix_openpt");
	char *name = ptsname(m);
	if (!name)
		die("ptsname");
	int s = open(name, O_RDWR | (ctty ? 0 : O_NOCTTY));
	if (s < 0)
		die("open slave");
	if (ctty && ioctl(s, TIOCSCTTY, 0))
		die("TIOCSCTTY");
	say("ready pid=%d master=%d slave=%d name=%s", getpid(), m, s, name);
	wait_usr1();
	say("check");
}

int main(int argc, char **argv)
{
	struct sigaction sa = {0};
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	if (argc < 2)
		return 2;
	const char *m = argv[1];
	if (!strcmp(m, "packet"))
		packet(1);
	else if (!strcmp(m, "packet-mixed"))
		packet(-1);
	else if (!strcmp(m, "packet-empty"))
		packet(0);
	else if (!strcmp(m, "sparse") && argc == 3)
		sparse(argv[2]);
	else if (!strcmp(m, "wronly") && argc == 3)
		wronly(argv[2]);
	else if (!strcmp(m, "owner"))
		owner(0);
	else if (!strcmp(m, "owner-pgrp"))
		owner(1);
	else if (!strcmp(m, "sharedfd"))
		sharedfd();
	else if (!strcmp(m, "unsharedfd"))
		unsharedfd();
	else if (!strcmp(m, "times") && argc == 5)
		times_(argv + 2);
	else if (!strcmp(m, "pty"))
		pty(0);
	else if (!strcmp(m, "ctty"))
		pty(1);
	else
		return 2;
	return 0;
}
