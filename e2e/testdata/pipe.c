/* pipe: reads from a pipe of its own.
 *
 *   pipe buffered   writes 200000 bytes into its own pipe (made 256 KiB
 *                   large) and reads them back 2000 bytes at a time, with a
 *                   pause after each chunk: "chunk I ok" per chunk, then
 *                   "done bytes=N pipesize=S ok" and exit 0.
 *   pipe block      blocks in read() on an empty pipe; a SIGALRM handler
 *                   (alarm in 3 s) writes a message into it: "got MSG",
 *                   then exit 0.
 * A chunk out of order or corrupt prints "FAIL ..." and exits 1. */
#include "common.h"

#define TOTAL 200000
#define CHUNK 2000

static int pfd[2];

static unsigned char byte_at(long i) { return (unsigned char)((i * 7 + i / 251) & 0xff); }

static void on_alrm(int sig)
{
	(void)sig;
	static const char msg[] = "wake-up-message-from-sigalrm";
	if (write(pfd[1], msg, sizeof msg - 1) != sizeof msg - 1)
		_exit(3);
}

static void readfull(int fd, unsigned char *buf, size_t n)
{
	for (size_t got = 0; got < n;) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			die("read");
		got += r;
	}
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	if (pipe(pfd))
		die("pipe");
	if (!strcmp(argv[1], "buffered")) {
		if (fcntl(pfd[1], F_SETPIPE_SZ, 256 << 10) < 0)
			die("F_SETPIPE_SZ");
		static unsigned char buf[TOTAL];
		for (long i = 0; i < TOTAL; i++)
			buf[i] = byte_at(i);
		for (size_t off = 0; off < TOTAL;) {
			ssize_t w = write(pfd[1], buf + off, TOTAL - off);
			if (w <= 0)
				die("write");
			off += w;
		}
		say("ready pid=%d", getpid());
		long pos = 0;
		for (int i = 0; pos < TOTAL; i++) {
			unsigned char chunk[CHUNK];
			readfull(pfd[0], chunk, CHUNK);
			for (int j = 0; j < CHUNK; j++, pos++)
				if (chunk[j] != byte_at(pos)) {
					say("FAIL chunk %d: byte %ld is %d, want %d", i, pos, chunk[j], byte_at(pos));
					return 1;
				}
			say("chunk %d ok", i);
			msleep(30);
		}
		say("done bytes=%ld pipesize=%d ok", pos, fcntl(pfd[0], F_GETPIPE_SZ));
		return 0;
	}
	if (!strcmp(argv[1], "block")) {
		struct sigaction sa = {0};
		sa.sa_handler = on_alrm;
		sa.sa_flags = SA_RESTART;
		sigaction(SIGALRM, &sa, NULL);
		alarm(3);
		say("ready pid=%d", getpid());
		char msg[64] = {0};
		ssize_t n;
		do
			n = read(pfd[0], msg, sizeof msg - 1);
		while (n < 0 && errno == EINTR);
		if (n <= 0)
			die("read");
		say("got %s", msg);
		return 0;
	}
	return 2;
}
