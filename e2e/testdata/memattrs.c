/* memattrs: per-process memory attributes.
 *
 *   memattrs THP OOM
 *
 * Sets prctl(PR_SET_THP_DISABLE, THP & 1, THP & ~1) (0, 1, or 3: off except
 * where madvised) and writes OOM to /proc/self/oom_score_adj, logs "ready
 * thp=T" (what PR_GET_THP_DISABLE says), then "tick N". */
#include "common.h"
#include <sys/prctl.h>

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	int thp = atoi(argv[1]);
	if (prctl(PR_SET_THP_DISABLE, thp & 1, thp & ~1, 0, 0))
		die("PR_SET_THP_DISABLE");
	int fd = open("/proc/self/oom_score_adj", O_WRONLY);
	if (fd < 0 || write(fd, argv[2], strlen(argv[2])) < 0)
		die("oom_score_adj");
	close(fd);
	say("ready thp=%d", prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0));
	for (unsigned long tick = 1;; tick++) {
		say("tick %lu", tick);
		msleep(30);
	}
}
