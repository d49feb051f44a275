// record.c sets up one process with many kinds of memory mappings and file
// descriptors and copies its own /proc files into a directory, so the parsers
// in core/proc are tested on what a real kernel writes.
//
//   gcc -O2 -pthread -o /tmp/record record.c && /tmp/record OUTDIR
//
// See README in this folder for what each file holds.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *outdir;

static void die(const char *what) {
	perror(what);
	exit(1);
}

static void copy(const char *src, const char *name) {
	char dst[4096];
	snprintf(dst, sizeof dst, "%s/%s", outdir, name);
	int in = open(src, O_RDONLY);
	if (in < 0) die(src);
	int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (out < 0) die(dst);
	char buf[1 << 16];
	ssize_t n;
	while ((n = read(in, buf, sizeof buf)) > 0)
		if (write(out, buf, n) != n) die("write");
	if (n < 0) die("read");
	close(in);
	close(out);
}

static void copyfd(int fd, const char *kind) {
	char src[64], name[64];
	snprintf(src, sizeof src, "/proc/self/fdinfo/%d", fd);
	snprintf(name, sizeof name, "fdinfo_%s", kind);
	copy(src, name);
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int stage;
static pid_t thread_tid;

static void *thread(void *arg) {
	(void)arg;
	// A name with a newline, a backslash and a ')': stat shows it raw,
	// status escapes it.
	prctl(PR_SET_NAME, "t\n\\) x(", 0, 0, 0);
	pthread_mutex_lock(&mu);
	thread_tid = syscall(SYS_gettid);
	stage = 1;
	pthread_cond_broadcast(&cv);
	while (stage != 2)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	return NULL;
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: record OUTDIR\n");
		return 2;
	}
	outdir = argv[1];
	long pg = sysconf(_SC_PAGESIZE);

	prctl(PR_SET_NAME, "a) (b c)", 0, 0, 0);
	umask(027);

	// A file with spaces in its name, mapped, and a second one unlinked.
	char p1[256], p2[256];
	snprintf(p1, sizeof p1, "%s/map with  spaces", outdir);
	snprintf(p2, sizeof p2, "%s/gone file (x)", outdir);
	int f1 = open(p1, O_RDWR | O_CREAT | O_TRUNC, 0644);
	int f2 = open(p2, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (f1 < 0 || f2 < 0) die("open");
	if (ftruncate(f1, 2 * pg) || ftruncate(f2, 2 * pg)) die("ftruncate");
	void *m1 = mmap(NULL, 2 * pg, PROT_READ, MAP_SHARED, f1, 0);
	void *m2 = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, f2, pg);
	if (m1 == MAP_FAILED || m2 == MAP_FAILED) die("mmap file");
	((char *)m2)[0] = 1;
	unlink(p2);
	unlink(p1);

	// memfd, mapped shared.
	int mfd = memfd_create("x y", MFD_CLOEXEC);
	if (mfd < 0 || ftruncate(mfd, 4 * pg)) die("memfd");
	char *mm = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (mm == MAP_FAILED) die("mmap memfd");
	mm[0] = 1;

	// SYSV shared memory.
	int shmid = shmget(IPC_PRIVATE, 3 * pg, IPC_CREAT | 0600);
	if (shmid < 0) die("shmget");
	char *shm = shmat(shmid, NULL, 0);
	if (shm == (void *)-1) die("shmat");
	shm[0] = 1;
	shmctl(shmid, IPC_RMID, NULL);

	// /dev/zero mapped shared: shown as "/dev/zero (deleted)".
	int zfd = open("/dev/zero", O_RDWR);
	char *z = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, zfd, 0);
	if (z == MAP_FAILED) die("mmap /dev/zero");
	z[0] = 1;
	close(zfd);

	// Anonymous mappings with madvise flags, locked, growsdown, shared.
	char *a = mmap(NULL, 16 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED) die("mmap anon");
	madvise(a + 0 * pg, 2 * pg, MADV_DONTDUMP);
	madvise(a + 3 * pg, 2 * pg, MADV_DONTFORK);
	madvise(a + 6 * pg, 2 * pg, MADV_WIPEONFORK);
	madvise(a + 9 * pg, 2 * pg, MADV_NOHUGEPAGE);
	madvise(a + 12 * pg, 2 * pg, MADV_HUGEPAGE);
	for (int i = 0; i < 16; i += 2) a[i * pg] = 1;
	char *l = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
	char *g = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN, -1, 0);
	char *s = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char *n = mmap(NULL, 1 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *x = mmap(NULL, 1 * pg, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (l == MAP_FAILED || g == MAP_FAILED || s == MAP_FAILED || n == MAP_FAILED || x == MAP_FAILED)
		die("mmap anon 2");
	s[0] = 1;
	x[0] = 1;

	// File descriptors of several kinds.
	int reg = open("/etc/hostname", O_RDONLY);
	if (reg < 0) reg = open("/etc/passwd", O_RDONLY);
	lseek(reg, 3, SEEK_SET);
	char wpath[256];
	snprintf(wpath, sizeof wpath, "%s/append file", outdir);
	int app = open(wpath, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0644);
	if (write(app, "hello\n", 6) != 6) die("write");
	flock(app, LOCK_EX);
	unlink(wpath);
	int efd = eventfd(42, EFD_NONBLOCK | EFD_CLOEXEC);
	int esem = eventfd(7, EFD_SEMAPHORE);
	int pp[2];
	if (pipe2(pp, O_NONBLOCK)) die("pipe");
	if (write(pp[1], "abc", 3) != 3) die("write pipe");
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	struct itimerspec its = {.it_interval = {1, 500000000}, .it_value = {100, 0}};
	timerfd_settime(tfd, 0, &its, NULL);
	int tfd2 = timerfd_create(CLOCK_REALTIME, 0);
	struct itimerspec its2 = {.it_value = {2000000000, 0}};
	timerfd_settime(tfd2, TFD_TIMER_ABSTIME, &its2, NULL);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = 0x1122334455667788ull};
	epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
	ev.events = EPOLLOUT;
	ev.data.fd = pp[1];
	epoll_ctl(ep, EPOLL_CTL_ADD, pp[1], &ev);
	ev.events = EPOLLIN;
	ev.data.fd = tfd;
	epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
	int in = inotify_init1(IN_NONBLOCK);
	inotify_add_watch(in, "/etc", IN_CREATE | IN_DELETE);
	inotify_add_watch(in, "/tmp", IN_MODIFY);
	sigset_t ss;
	sigemptyset(&ss);
	sigaddset(&ss, SIGUSR1);
	sigaddset(&ss, SIGTERM);
	int sfd = signalfd(-1, &ss, SFD_NONBLOCK);
	int sock = socket(AF_INET, SOCK_STREAM, 0);
	int pidfd = syscall(SYS_pidfd_open, getpid(), 0);

	// Signals: block one, ignore one, catch one, leave one pending.
	sigprocmask(SIG_BLOCK, &ss, NULL);
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = {.sa_handler = (void (*)(int))exit};
	sigaction(SIGHUP, &sa, NULL);
	kill(getpid(), SIGUSR1);

	// A second thread with a hard name.
	pthread_t th;
	pthread_create(&th, NULL, thread, NULL);
	pthread_mutex_lock(&mu);
	while (stage != 1)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);

	// A zombie child.
	pid_t child = fork();
	if (child == 0) _exit(3);
	siginfo_t si;
	waitid(P_PID, child, &si, WEXITED | WNOWAIT);

	copy("/proc/self/maps", "maps");
	copy("/proc/self/smaps", "smaps");
	copy("/proc/self/stat", "stat");
	copy("/proc/self/status", "status");
	copy("/proc/self/auxv", "auxv");
	copy("/proc/self/cmdline", "cmdline");
	char path[128];
	snprintf(path, sizeof path, "/proc/self/task/%d/stat", thread_tid);
	copy(path, "task_stat");
	snprintf(path, sizeof path, "/proc/self/task/%d/status", thread_tid);
	copy(path, "task_status");
	snprintf(path, sizeof path, "/proc/%d/stat", child);
	copy(path, "zombie_stat");
	snprintf(path, sizeof path, "/proc/%d/status", child);
	copy(path, "zombie_status");
	copy("/proc/2/stat", "kthread_stat");
	copy("/proc/2/status", "kthread_status");
	copyfd(reg, "regular");
	copyfd(app, "append_locked");
	copyfd(efd, "eventfd");
	copyfd(esem, "eventfd_semaphore");
	copyfd(pp[0], "pipe_read");
	copyfd(pp[1], "pipe_write");
	copyfd(tfd, "timerfd");
	copyfd(tfd2, "timerfd_abs");
	copyfd(ep, "epoll");
	copyfd(in, "inotify");
	copyfd(sfd, "signalfd");
	copyfd(sock, "socket");
	copyfd(mfd, "memfd");
	if (pidfd >= 0) copyfd(pidfd, "pidfd");

	pthread_mutex_lock(&mu);
	stage = 2;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	pthread_join(th, NULL);
	waitpid(child, NULL, 0);
	return 0;
}
