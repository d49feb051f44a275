/* fds: file descriptors of several kinds with their flags.
 *
 *   fds FILE DIR
 *
 * Opens: an eventfd with count 12 (close-on-exec), a semaphore eventfd
 * with count 3 (non-blocking), a sealed memfd "mydata" holding 64 KiB at
 * offset 1000, /dev/null twice (one close-on-exec), FILE with "0123456789"
 * written and two dups sharing its offset (one at fd 50, close-on-exec),
 * DIR as a directory fd, a non-blocking pipe, and DIR/fifo, a FIFO opened
 * read-write holding "fifo-data-123".
 *
 * Lines: "ready pid=P", "tick N"; on SIGUSR1 "check ..." with what the
 * process sees, each item "ok" or a value. */
#include "common.h"
#include <sys/eventfd.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

#define MEMFD_SIZE (64 << 10)
static unsigned char mem_byte(long i) { return (unsigned char)(i * 31 + (i >> 8)); }

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	int ev = eventfd(5, EFD_CLOEXEC);
	if (ev < 0)
		die("eventfd");
	uint64_t seven = 7;
	if (write(ev, &seven, 8) != 8)
		die("write eventfd");
	int sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
	if (sem < 0)
		die("eventfd");
	int mfd = memfd_create("mydata", MFD_ALLOW_SEALING);
	if (mfd < 0)
		die("memfd_create");
	static unsigned char buf[MEMFD_SIZE];
	for (long i = 0; i < MEMFD_SIZE; i++)
		buf[i] = mem_byte(i);
	if (write(mfd, buf, MEMFD_SIZE) != MEMFD_SIZE)
		die("write memfd");
	if (lseek(mfd, 1000, SEEK_SET) != 1000)
		die("lseek memfd");
	if (fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK))
		die("F_ADD_SEALS");
	int nullc = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int nullw = open("/dev/null", O_WRONLY);
	int f = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (nullc < 0 || nullw < 0 || f < 0)
		die("open");
	if (write(f, "0123456789", 10) != 10)
		die("write");
	int g = dup(f);
	int h = dup3(f, 50, O_CLOEXEC);
	int d = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int pp[2];
	if (g < 0 || h != 50 || d < 0 || pipe2(pp, O_NONBLOCK))
		die("dup/open/pipe");
	char fifo[4096];
	snprintf(fifo, sizeof fifo, "%s/fifo", argv[2]);
	if (mkfifo(fifo, 0600))
		die("mkfifo");
	int ff = open(fifo, O_RDWR | O_NONBLOCK);
	if (ff < 0 || write(ff, "fifo-data-123", 13) != 13)
		die("fifo");
	signal(SIGUSR1, on_usr1);
	say("ready pid=%d ev=%d sem=%d memfd=%d nullc=%d nullw=%d f=%d g=%d h=%d dir=%d pipe=%d,%d",
	    getpid(), ev, sem, mfd, nullc, nullw, f, g, h, d, pp[0], pp[1]);
	for (unsigned long tick = 1;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			uint64_t v = 0, s = 0;
			if (read(ev, &v, 8) != 8)
				die("read eventfd");
			if (read(sem, &s, 8) != 8)
				die("read semaphore");
			memset(buf, 0, sizeof buf);
			int memok = pread(mfd, buf, MEMFD_SIZE, 0) == MEMFD_SIZE;
			for (long i = 0; memok && i < MEMFD_SIZE; i++)
				memok = buf[i] == mem_byte(i);
			long mpos = lseek(mfd, 0, SEEK_CUR);
			int seals = fcntl(mfd, F_GET_SEALS);
			long pf = lseek(f, 0, SEEK_CUR), pg = lseek(g, 0, SEEK_CUR);
			if (write(g, "abc", 3) != 3)
				die("write");
			long pf2 = lseek(f, 0, SEEK_CUR), ph2 = lseek(h, 0, SEEK_CUR);
			int shared = pf == 10 && pg == 10 && pf2 == 13 && ph2 == 13;
			int fl = fcntl(pp[0], F_GETFL);
			char rd;
			int empty = read(pp[0], &rd, 1) < 0 && errno == EAGAIN;
			char fdata[64] = {0};
			if (read(ff, fdata, sizeof fdata - 1) < 0)
				strcpy(fdata, "EMPTY");
			say("check eventfd=%llu sem=%llu memfd=%s memfdpos=%ld seals=%d shared=%s pos=%ld,%ld,%ld,%ld "
			    "cloexec=%d%d%d%d%d%d%d%d pipenonblock=%d pipeempty=%d fifo=%s",
			    (unsigned long long)v, (unsigned long long)s, memok ? "ok" : "FAIL", mpos, seals,
			    shared ? "ok" : "FAIL", pf, pg, pf2, ph2,
			    fcntl(ev, F_GETFD), fcntl(sem, F_GETFD), fcntl(mfd, F_GETFD), fcntl(nullc, F_GETFD),
			    fcntl(nullw, F_GETFD), fcntl(f, F_GETFD), fcntl(h, F_GETFD), fcntl(d, F_GETFD),
			    !!(fl & O_NONBLOCK), empty, fdata);
		}
		say("tick %lu", tick);
		msleep(20);
	}
}
