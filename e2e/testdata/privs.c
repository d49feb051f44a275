/* privs: credentials and privilege limits.
 *
 *   privs id
 *   privs hold PATH
 *   privs drop UID GID [single] [dumpable|undumpable]
 *
 * id    prints "id euid=U egid=G" and exits 0.
 * hold  opens PATH read-only and maps it, reports "ready fd=N", then
 *       "tick N" until killed (the test deletes PATH meanwhile).
 * drop  (started as root) drops to UID and GID with groups GID,100, keeping
 *       CAP_NET_BIND_SERVICE and CAP_CHOWN permitted, CAP_NET_BIND_SERVICE
 *       effective and ambient, CAP_NET_BIND_SERVICE and CAP_NET_RAW
 *       inheritable, a bounding set of those three, securebits
 *       NOROOT|NOROOT_LOCKED|KEEP_CAPS_LOCKED and no_new_privs; then starts
 *       a thread, which drops CAP_CHOWN from its own permitted set and
 *       CAP_NET_BIND_SERVICE from its effective set (raw capset: that
 *       thread only). With "single", no thread (tid=0); with "dumpable",
 *       PR_SET_DUMPABLE 1 after the drop (which made it not dumpable), with
 *       "undumpable" PR_SET_DUMPABLE 0.
 *       Lines: "ready pid=P tid=T" (T: the thread), then on start and on
 *       each SIGUSR1 one "self who=main|thread ..." line per thread with
 *       its own /proc/thread-self/status fields and securebits, and
 *       "tick N". */
#include "common.h"
#include <grp.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <linux/capability.h>
#include <linux/securebits.h>

static volatile sig_atomic_t generation;
static void on_usr1(int sig) { (void)sig; generation++; }

static int capset3(uint64_t eff, uint64_t prm, uint64_t inh)
{
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2] = {
		{(uint32_t)eff, (uint32_t)prm, (uint32_t)inh},
		{(uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32)},
	};
	return syscall(SYS_capset, &h, d);
}

static void report(const char *who)
{
	char buf[8192], out[2048];
	int fd = open("/proc/thread-self/status", O_RDONLY);
	if (fd < 0)
		die("open status");
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		die("read status");
	buf[n] = 0;
	int o = snprintf(out, sizeof out, "self who=%s securebits=%#x dumpable=%d", who, (unsigned)prctl(PR_GET_SECUREBITS),
			 prctl(PR_GET_DUMPABLE));
	static const char *keys[] = {"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"};
	for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
		size_t kl = strlen(keys[k]);
		for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
			if (strncmp(l, keys[k], kl) || l[kl] != ':')
				continue;
			char *v = l + kl + 1, *e = strchr(v, '\n');
			while (*v == '\t' || *v == ' ')
				v++;
			int len = e ? (int)(e - v) : (int)strlen(v);
			while (len > 0 && v[len - 1] == ' ')
				len--;
			o += snprintf(out + o, sizeof out - o, " %s=", keys[k]);
			for (int i = 0; i < len && o < (int)sizeof out - 2; i++)
				out[o++] = (v[i] == '\t' || v[i] == ' ') ? ',' : v[i];
			out[o] = 0;
			break;
		}
	}
	say("%s", out);
}

static volatile int thread_tid;

static void *thread_main(void *arg)
{
	(void)arg;
	const uint64_t bind = 1ULL << CAP_NET_BIND_SERVICE, raw = 1ULL << CAP_NET_RAW;
	if (capset3(0, bind, bind | raw))
		die("thread capset");
	thread_tid = (int)syscall(SYS_gettid);
	int seen = -1;
	for (;;) {
		if (seen != generation) {
			seen = generation;
			report("thread");
		}
		msleep(10);
	}
	return NULL;
}

static __attribute__((noreturn)) void drop(uid_t uid, gid_t gid, int single, int dumpable)
{
	const uint64_t bind = 1ULL << CAP_NET_BIND_SERVICE, chown = 1ULL << CAP_CHOWN, raw = 1ULL << CAP_NET_RAW;
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
		die("keepcaps");
	gid_t groups[2] = {gid, 100};
	if (setgroups(2, groups))
		die("setgroups");
	if (setresgid(gid, gid, gid) || setresuid(uid, uid, uid))
		die("setres*id");
	/* Permitted kept, effective cleared: take them back for what follows. */
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d))
		die("capget");
	uint64_t prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
	if (capset3(prm, prm, 0))
		die("capset");
	int last = 40;
	FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "r");
	if (f) {
		if (fscanf(f, "%d", &last) != 1)
			last = 40;
		fclose(f);
	}
	for (int c = 0; c <= last; c++)
		if (!((bind | chown | raw) & (1ULL << c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0))
			die("capbset_drop");
	if (prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS_LOCKED, 0, 0, 0))
		die("securebits");
	if (capset3(bind, bind | chown, bind | raw))
		die("capset final");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
		die("ambient");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		die("no_new_privs");
	if (dumpable >= 0 && prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0))
		die("dumpable");
	signal(SIGUSR1, on_usr1);
	pthread_t th;
	if (!single && pthread_create(&th, NULL, thread_main, NULL))
		die("pthread_create");
	while (!single && !thread_tid)
		msleep(1);
	say("ready pid=%d tid=%d", getpid(), thread_tid);
	int seen = -1;
	for (unsigned long tick = 1;; tick++) {
		if (seen != generation) {
			seen = generation;
			report("main");
		}
		say("tick %lu", tick);
		msleep(20);
	}
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "id")) {
		say("id euid=%d egid=%d", (int)geteuid(), (int)getegid());
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "hold")) {
		int fd = open(argv[2], O_RDONLY);
		if (fd < 0)
			die("open");
		struct stat st;
		if (fstat(fd, &st))
			die("fstat");
		if (mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0) == MAP_FAILED)
			die("mmap");
		say("ready fd=%d", fd);
		for (unsigned long tick = 1;; tick++) {
			say("tick %lu", tick);
			msleep(20);
		}
	}
	if (argc >= 4 && !strcmp(argv[1], "drop")) {
		int single = 0, dumpable = -1;
		for (int i = 4; i < argc; i++) {
			if (!strcmp(argv[i], "single"))
				single = 1;
			else if (!strcmp(argv[i], "dumpable"))
				dumpable = 1;
			else if (!strcmp(argv[i], "undumpable"))
				dumpable = 0;
			else
				return 2;
		}
		drop((uid_t)atoi(argv[2]), (gid_t)atoi(argv[3]), single, dumpable);
	}
	return 2;
}
