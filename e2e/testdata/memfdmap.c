/* memfdmap: memfds mapped with no fd left, with seals.
 *
 *   memfdmap
 *
 * "shared-sealed": 3 pages mapped MAP_SHARED read-only, sealed
 * F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL. "private-wsealed": 2 pages mapped
 * MAP_PRIVATE, sealed F_SEAL_WRITE|F_SEAL_SEAL. "plain": 1 page mapped
 * shared read-write, made without MFD_ALLOW_SEALING. "noexec": 1 page
 * mapped shared read-only, made with MFD_NOEXEC_SEAL (mode 0666, sealed
 * F_SEAL_EXEC). The fds are closed. Logs "ready a=A b=B c=C d=D" (hex
 * addresses), then "tick N". */
#include "common.h"

static char *mapped(const char *name, int flags, size_t len, int prot, int share, int seals)
{
	int fd = memfd_create(name, flags);
	if (fd < 0)
		die("memfd_create");
	char buf[4096];
	memset(buf, name[0], sizeof buf);
	for (size_t off = 0; off < len; off += sizeof buf)
		if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf)
			die("write");
	char *p = mmap(NULL, len, prot, share, fd, 0);
	if (p == MAP_FAILED)
		die("mmap");
	if (seals && fcntl(fd, F_ADD_SEALS, seals))
		die("F_ADD_SEALS");
	close(fd);
	return p;
}

int main(void)
{
	long pg = sysconf(_SC_PAGESIZE);
	char *a = mapped("shared-sealed", MFD_ALLOW_SEALING, 3 * pg, PROT_READ, MAP_SHARED,
			 F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
	char *b = mapped("private-wsealed", MFD_ALLOW_SEALING, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE,
			 F_SEAL_WRITE | F_SEAL_SEAL);
	char *c = mapped("plain", 0, pg, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
	char *d = mapped("noexec", MFD_NOEXEC_SEAL, pg, PROT_READ, MAP_SHARED, 0);
	b[0] = 'x';
	c[0] = 'y';
	say("ready a=%lx b=%lx c=%lx d=%lx", (unsigned long)a, (unsigned long)b, (unsigned long)c, (unsigned long)d);
	for (unsigned long tick = 1;; tick++) {
		say("tick %lu", tick);
		msleep(30);
	}
}
