/* sock_listen: a server on a unix socket path, TCP 127.0.0.1:PORT and
 * [::1]:PORT, and UDP 127.0.0.1:PORT, with socket options set.
 *
 *   sock_listen DIR PORT
 *
 * Each stream connection sends one line and gets "answer NAME N" back (N
 * counts the connections of that listener), then the server closes it.
 * A UDP datagram gets "pong NAME N" back. Also holds a TCP socket bound
 * to an ephemeral port and not listening, and two unbound sockets.
 *
 * Lines: "ready pid=P", "served NAME N"; on SIGUSR1 one "opts NAME ..."
 * line per socket with what getsockopt reads, then "opts-end". */
#include "common.h"
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

static void setopt(int fd, int level, int name, int v)
{
	if (setsockopt(fd, level, name, &v, sizeof v))
		die("setsockopt");
}

static int getopt_int(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof v;
	if (getsockopt(fd, level, name, &v, &l))
		return -errno;
	return v;
}

static int port_of(int fd)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof ss;
	if (getsockname(fd, (struct sockaddr *)&ss, &l))
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return 0;
}

static void tcp_opts(int fd)
{
	setopt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
	setopt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
	setopt(fd, SOL_SOCKET, SO_RCVBUF, 100000);
	setopt(fd, SOL_SOCKET, SO_SNDBUF, 50000);
	setopt(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
	setopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, 30);
	setopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, 5);
	setopt(fd, IPPROTO_TCP, TCP_KEEPCNT, 3);
	setopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, 5);
	setopt(fd, IPPROTO_TCP, TCP_FASTOPEN, 16);
	setopt(fd, IPPROTO_IP, IP_TOS, 0x10);
	setopt(fd, SOL_SOCKET, SO_MARK, 42);
}

static void print_opts(const char *name, int fd)
{
	struct tcp_info ti;
	socklen_t l = sizeof ti;
	memset(&ti, 0, sizeof ti);
	getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l);
	say("opts %s port=%d reuseaddr=%d nodelay=%d rcvbuf=%d sndbuf=%d keepalive=%d keepidle=%d keepintvl=%d "
	    "keepcnt=%d deferaccept=%d fastopen=%d tos=%d mark=%d v6only=%d broadcast=%d freebind=%d "
	    "state=%d backlog=%u acceptconn=%d nonblock=%d",
	    name, port_of(fd), getopt_int(fd, SOL_SOCKET, SO_REUSEADDR), getopt_int(fd, IPPROTO_TCP, TCP_NODELAY),
	    getopt_int(fd, SOL_SOCKET, SO_RCVBUF), getopt_int(fd, SOL_SOCKET, SO_SNDBUF),
	    getopt_int(fd, SOL_SOCKET, SO_KEEPALIVE), getopt_int(fd, IPPROTO_TCP, TCP_KEEPIDLE),
	    getopt_int(fd, IPPROTO_TCP, TCP_KEEPINTVL), getopt_int(fd, IPPROTO_TCP, TCP_KEEPCNT),
	    getopt_int(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT), getopt_int(fd, IPPROTO_TCP, TCP_FASTOPEN),
	    getopt_int(fd, IPPROTO_IP, IP_TOS), getopt_int(fd, SOL_SOCKET, SO_MARK),
	    getopt_int(fd, IPPROTO_IPV6, IPV6_V6ONLY), getopt_int(fd, SOL_SOCKET, SO_BROADCAST),
	    getopt_int(fd, IPPROTO_IP, IP_FREEBIND), ti.tcpi_state, ti.tcpi_sacked,
	    getopt_int(fd, SOL_SOCKET, SO_ACCEPTCONN), !!(fcntl(fd, F_GETFL) & O_NONBLOCK));
}

/* serve answers one stream connection. */
static void serve(int l, const char *name, int *count)
{
	int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return;
		die("accept");
	}
	struct timeval tv = {5, 0};
	setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	char buf[256];
	ssize_t n = read(c, buf, sizeof buf);
	if (n > 0) {
		++*count;
		char out[64];
		int m = snprintf(out, sizeof out, "answer %s %d\n", name, *count);
		if (write(c, out, m) != m)
			say("write to a client failed: %s", strerror(errno));
		say("served %s %d", name, *count);
	}
	close(c);
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	int port = atoi(argv[2]);

	struct sockaddr_un un = {.sun_family = AF_UNIX};
	snprintf(un.sun_path, sizeof un.sun_path, "%s/srv.sock", argv[1]);
	int ux = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (ux < 0 || bind(ux, (struct sockaddr *)&un, sizeof un) || chmod(un.sun_path, 0660) || listen(ux, 8))
		die("unix listener");

	struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int t4 = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (t4 < 0)
		die("socket");
	tcp_opts(t4);
	if (bind(t4, (struct sockaddr *)&a4, sizeof a4) || listen(t4, 16))
		die("tcp4 listener");

	struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	int t6 = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (t6 < 0)
		die("socket");
	setopt(t6, IPPROTO_IPV6, IPV6_V6ONLY, 1);
	setopt(t6, SOL_SOCKET, SO_REUSEADDR, 1);
	setopt(t6, IPPROTO_TCP, TCP_NODELAY, 1);
	if (bind(t6, (struct sockaddr *)&a6, sizeof a6) || listen(t6, 4))
		die("tcp6 listener");

	int u4 = socket(AF_INET, SOCK_DGRAM, 0);
	if (u4 < 0)
		die("socket");
	setopt(u4, SOL_SOCKET, SO_BROADCAST, 1);
	setopt(u4, SOL_SOCKET, SO_RCVBUF, 60000);
	if (bind(u4, (struct sockaddr *)&a4, sizeof a4))
		die("udp bind");

	struct sockaddr_in eph = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int bound = socket(AF_INET, SOCK_STREAM, 0);
	if (bound < 0 || bind(bound, (struct sockaddr *)&eph, sizeof eph))
		die("bound socket");
	int unbound = socket(AF_INET6, SOCK_STREAM, 0), unbound_udp = socket(AF_INET6, SOCK_DGRAM, 0);
	if (unbound < 0 || unbound_udp < 0)
		die("socket");

	signal(SIGUSR1, on_usr1);
	say("ready pid=%d", getpid());
	int nux = 0, n4 = 0, n6 = 0, nu = 0;
	for (;;) {
		if (got_usr1) {
			got_usr1 = 0;
			print_opts("unix", ux);
			print_opts("tcp4", t4);
			print_opts("tcp6", t6);
			print_opts("udp4", u4);
			print_opts("bound", bound);
			print_opts("unbound", unbound);
			print_opts("unbound-udp", unbound_udp);
			struct stat st;
			say("opts unix-file mode=%o", stat(un.sun_path, &st) == 0 ? st.st_mode : 0);
			say("opts-end");
		}
		struct pollfd p[] = {{ux, POLLIN, 0}, {t4, POLLIN, 0}, {t6, POLLIN, 0}, {u4, POLLIN, 0}};
		int r = poll(p, 4, 100);
		if (r < 0 && errno != EINTR)
			die("poll");
		if (r <= 0)
			continue;
		if (p[0].revents)
			serve(ux, "unix", &nux);
		if (p[1].revents)
			serve(t4, "tcp4", &n4);
		if (p[2].revents)
			serve(t6, "tcp6", &n6);
		if (p[3].revents) {
			char buf[256];
			struct sockaddr_storage from;
			socklen_t fl = sizeof from;
			ssize_t n = recvfrom(u4, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
			if (n >= 0) {
				char out[64];
				int m = snprintf(out, sizeof out, "pong udp4 %d\n", ++nu);
				sendto(u4, out, m, 0, (struct sockaddr *)&from, fl);
				say("served udp4 %d", nu);
			}
		}
	}
}
