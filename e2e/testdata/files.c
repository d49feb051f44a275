/* files: regular files at offsets, and a file deleted while open.
 *
 *   files DATA OUT DIR
 *
 * DATA holds lines "line NNNN\n" (10 bytes each); files reads one line per
 * tick from offset 100 on (line 0010 first). OUT is created and gets
 * "header\n" and then "rec N\n" per tick, written at the file offset (not
 * O_APPEND). DIR/deleted.dat is created, filled with 300000 bytes, seeked to
 * 12345 and unlinked while open.
 *
 * Lines: "ready pid=P fds=IN,OUT,DEL", "tick N read=LINE" per tick.
 * SIGUSR1: check the deleted file's contents and offset:
 * "deleted ok size=S pos=P" (or FAIL). */
#include "common.h"

#define DELSIZE 300000

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

static unsigned char del_byte(long i) { return (unsigned char)((i * 13 + 5) ^ (i >> 9)); }

int main(int argc, char **argv)
{
	if (argc != 4)
		return 2;
	int in = open(argv[1], O_RDONLY);
	if (in < 0)
		die("open data");
	if (lseek(in, 100, SEEK_SET) != 100)
		die("lseek");
	int out = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (out < 0)
		die("open out");
	if (write(out, "header\n", 7) != 7)
		die("write");
	char path[4096];
	snprintf(path, sizeof path, "%s/deleted.dat", argv[3]);
	int del = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (del < 0)
		die("open deleted");
	static unsigned char buf[DELSIZE];
	for (long i = 0; i < DELSIZE; i++)
		buf[i] = del_byte(i);
	if (write(del, buf, DELSIZE) != DELSIZE)
		die("write deleted");
	if (lseek(del, 12345, SEEK_SET) != 12345)
		die("lseek");
	if (unlink(path))
		die("unlink");
	signal(SIGUSR1, on_usr1);

	say("ready pid=%d fds=%d,%d,%d", getpid(), in, out, del);
	for (unsigned long tick = 1;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			struct stat st;
			if (fstat(del, &st))
				die("fstat");
			memset(buf, 0, sizeof buf);
			if (pread(del, buf, DELSIZE, 0) != DELSIZE)
				die("pread deleted");
			for (long i = 0; i < DELSIZE; i++)
				if (buf[i] != del_byte(i)) {
					say("FAIL deleted file byte %ld is %d, want %d", i, buf[i], del_byte(i));
					return 1;
				}
			say("deleted ok size=%ld pos=%ld nlink=%ld", (long)st.st_size, (long)lseek(del, 0, SEEK_CUR), (long)st.st_nlink);
		}
		char rec[64];
		int n = snprintf(rec, sizeof rec, "rec %lu\n", tick);
		if (write(out, rec, n) != n)
			die("write out");
		char line[11] = {0};
		ssize_t r = read(in, line, 10);
		if (r == 10 && line[9] == '\n') {
			line[9] = 0;
			say("tick %lu read=%s", tick, line + 5);
		} else {
			say("tick %lu read=EOF", tick);
		}
		msleep(30);
	}
}
