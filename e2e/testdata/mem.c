/* mem: memory areas of several kinds.
 *
 *   mem PRIVATE SHARED
 *
 * PRIVATE (1 MiB) is mapped MAP_PRIVATE read-write; pages 3 and 7 are then
 * written to (the file itself must not change). SHARED (64 KiB) is mapped
 * MAP_SHARED and "shared-1" written at offset 0 (that goes to the file).
 * 4 MiB of MAP_SHARED|MAP_ANONYMOUS memory is filled with a pattern. Three
 * 64 KiB anonymous areas carry MADV_DONTFORK, MADV_WIPEONFORK and
 * MADV_NOHUGEPAGE.
 *
 * Lines: "ready pid=P priv=ADDR dontfork=ADDR ... huge=ADDR",
 * "sums priv=X anon=Y page3=B page0=ok|FAIL" at start and on SIGUSR1;
 * SIGUSR1 also writes "shared-2" at offset 4096 of SHARED ("wrote shared");
 * "tick N" per tick. */
#include "common.h"

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

#define PRIV (1 << 20)
#define SHANON (4 << 20)

static unsigned char *priv, *shanon, *sfile;
static int privfd;

static void sums(void)
{
	/* Page 0 of the private mapping is untouched: it must read as the file. */
	unsigned char page[4096];
	int ok = pread(privfd, page, sizeof page, 0) == sizeof page && !memcmp(page, priv, sizeof page);
	say("sums priv=%016llx anon=%016llx page3=%02x page0=%s",
	    (unsigned long long)sum64(priv, PRIV), (unsigned long long)sum64(shanon, SHANON),
	    priv[3 * 4096 + 17], ok ? "ok" : "FAIL");
}

static void *area(int advice, size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	if (madvise(p, len, advice))
		die("madvise");
	memset(p, 0x5a, len);
	return p;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	privfd = open(argv[1], O_RDONLY);
	if (privfd < 0)
		die("open private");
	priv = mmap(NULL, PRIV, PROT_READ | PROT_WRITE, MAP_PRIVATE, privfd, 0);
	if (priv == MAP_FAILED)
		die("mmap private");
	memset(priv + 3 * 4096, 0xa3, 4096);
	memcpy(priv + 7 * 4096 + 100, "written-in-memory", 17);

	int sfd = open(argv[2], O_RDWR);
	if (sfd < 0)
		die("open shared");
	sfile = mmap(NULL, 64 << 10, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
	if (sfile == MAP_FAILED)
		die("mmap shared");
	close(sfd);
	memcpy(sfile, "shared-1", 8);
	msync(sfile, 4096, MS_SYNC);

	shanon = mmap(NULL, SHANON, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shanon == MAP_FAILED)
		die("mmap shared anon");
	fill(shanon, SHANON, 5);

	void *df = area(MADV_DONTFORK, 64 << 10), *wf = area(MADV_WIPEONFORK, 64 << 10);
	void *nh = area(MADV_NOHUGEPAGE, 64 << 10), *dd = area(MADV_DONTDUMP, 64 << 10);
	void *hg = area(MADV_HUGEPAGE, 4 << 20);
	signal(SIGUSR1, on_usr1);
	say("ready pid=%d priv=%p dontfork=%p wipeonfork=%p nohuge=%p dontdump=%p huge=%p", getpid(), priv, df, wf, nh, dd, hg);
	sums();
	for (unsigned long tick = 1;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			sums();
			memcpy(sfile + 4096, "shared-2", 8);
			if (msync(sfile, 2 * 4096, MS_SYNC))
				die("msync");
			say("wrote shared");
		}
		say("tick %lu", tick);
		msleep(20);
	}
}
