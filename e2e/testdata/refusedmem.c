/* refusedmem: memory a dump refuses.
 *
 *   refusedmem sysv|hugetlb
 *
 * sysv: a System V shared memory segment attached (and marked removed).
 * hugetlb: 2 MiB of MAP_HUGETLB memory, touched.
 * Logs "ready addr=A" (hex), then "tick N". */
#include "common.h"
#include <sys/ipc.h>
#include <sys/shm.h>

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	char *p;
	if (!strcmp(argv[1], "sysv")) {
		int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
		if (id < 0)
			die("shmget");
		p = shmat(id, NULL, 0);
		if (p == (void *)-1)
			die("shmat");
		shmctl(id, IPC_RMID, NULL);
	} else if (!strcmp(argv[1], "hugetlb")) {
		p = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		if (p == MAP_FAILED)
			die("mmap MAP_HUGETLB");
	} else {
		return 2;
	}
	p[0] = 1;
	say("ready addr=%lx", (unsigned long)p);
	for (unsigned long tick = 1;; tick++) {
		say("tick %lu", tick);
		msleep(30);
	}
}
