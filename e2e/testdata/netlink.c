/* netlink: a process holding netlink sockets, for the tests that move them.
 *
 *   netlink PREFIX
 *
 * A NETLINK_ROUTE socket bound by the kernel (port id 0 asked) to the link
 * group (RTMGRP_LINK), with NETLINK_EXT_ACK and NETLINK_NO_ENOBUFS set and
 * a larger receive buffer; a NETLINK_GENERIC socket bound to an explicit
 * port id, with NETLINK_CAP_ACK set.
 *
 * Lines: "ready pid=P route=PORT generic=PORT", then "tick N" every 20 ms.
 * "event NAME" for each new link (RTM_NEWLINK) whose name starts with
 * PREFIX, as the route socket receives it.
 * SIGUSR1: check that both sockets still answer: an RTM_GETLINK of the
 * loopback link on the route socket, a CTRL_CMD_GETFAMILY of "nlctrl" on
 * the generic one; then "check N route=PORT generic=PORT ok" (N counts the
 * checks, the ports as getsockname reads them now), or "FAIL ...". */
#include "common.h"
#include <poll.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>

static volatile sig_atomic_t got_usr1;
static const char *prefix;
static unsigned seq = 100;

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1 = 1;
}

static unsigned port(int fd)
{
	struct sockaddr_nl a;
	socklen_t l = sizeof a;
	if (getsockname(fd, (struct sockaddr *)&a, &l))
		die("getsockname");
	return a.nl_pid;
}

/* events reports the new links of a batch of route messages; it returns 1
 * if one of them answers sequence number want (an error: -1). */
static int handle(char *buf, int n, unsigned want)
{
	int answered = 0;
	for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
		if (want && h->nlmsg_seq == want) {
			if (h->nlmsg_type == NLMSG_ERROR) {
				struct nlmsgerr *e = NLMSG_DATA(h);
				if (e->error)
					return -1;
			}
			answered = 1;
		}
		if (h->nlmsg_type != RTM_NEWLINK || h->nlmsg_seq != 0)
			continue;
		struct ifinfomsg *ifi = NLMSG_DATA(h);
		int len = IFLA_PAYLOAD(h);
		for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len))
			if (a->rta_type == IFLA_IFNAME && !strncmp(RTA_DATA(a), prefix, strlen(prefix)))
				say("event %s", (char *)RTA_DATA(a));
	}
	return answered;
}

/* await reads fd until the answer to seq want arrives (route messages on
 * the way are handled); 0 once it did. */
static int await(int fd, unsigned want, int route)
{
	static char buf[65536];
	for (int tries = 0; tries < 500; tries++) {
		struct pollfd p = {fd, POLLIN, 0};
		if (poll(&p, 1, 20) < 0 && errno != EINTR)
			return -1;
		if (!(p.revents & POLLIN))
			continue;
		int n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n <= 0)
			return -1;
		if (route) {
			int r = handle(buf, n, want);
			if (r)
				return r < 0 ? -1 : 0;
			continue;
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n))
			if (h->nlmsg_seq == want)
				return h->nlmsg_type == NLMSG_ERROR ? -1 : 0;
	}
	errno = ETIMEDOUT;
	return -1;
}

static int ask_route(int fd)
{
	struct {
		struct nlmsghdr h;
		struct ifinfomsg i;
	} req = {0};
	req.h.nlmsg_len = sizeof req;
	req.h.nlmsg_type = RTM_GETLINK;
	req.h.nlmsg_flags = NLM_F_REQUEST;
	req.h.nlmsg_seq = ++seq;
	req.i.ifi_family = AF_UNSPEC;
	req.i.ifi_index = 1;
	if (send(fd, &req, sizeof req, 0) != sizeof req)
		return -1;
	return await(fd, seq, 1);
}

static int ask_generic(int fd)
{
	struct {
		struct nlmsghdr h;
		struct genlmsghdr g;
		struct nlattr a;
		char name[8];
	} req = {0};
	req.h.nlmsg_len = sizeof req;
	req.h.nlmsg_type = GENL_ID_CTRL;
	req.h.nlmsg_flags = NLM_F_REQUEST;
	req.h.nlmsg_seq = ++seq;
	req.g.cmd = CTRL_CMD_GETFAMILY;
	req.g.version = 1;
	req.a.nla_type = CTRL_ATTR_FAMILY_NAME;
	req.a.nla_len = sizeof req.a + sizeof "nlctrl";
	strcpy(req.name, "nlctrl");
	if (send(fd, &req, sizeof req, 0) != sizeof req)
		return -1;
	return await(fd, seq, 0);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	prefix = argv[1];
	signal(SIGUSR1, on_usr1);

	int rt = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (rt < 0)
		die("socket route");
	int one = 1, rcvbuf = 1 << 20;
	if (setsockopt(rt, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one) ||
	    setsockopt(rt, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one) ||
	    setsockopt(rt, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf))
		die("setsockopt route");
	struct sockaddr_nl a = {.nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK};
	if (bind(rt, (struct sockaddr *)&a, sizeof a))
		die("bind route");

	int gn = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_GENERIC);
	if (gn < 0)
		die("socket generic");
	if (setsockopt(gn, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one))
		die("setsockopt generic");
	a.nl_groups = 0;
	a.nl_pid = 0x70000000u | (unsigned)getpid();
	if (bind(gn, (struct sockaddr *)&a, sizeof a))
		die("bind generic");

	say("ready pid=%d route=%u generic=%u", getpid(), port(rt), port(gn));
	static char buf[65536];
	for (unsigned long tick = 1, checks = 0;; tick++) {
		if (got_usr1) {
			got_usr1 = 0;
			checks++;
			if (ask_route(rt))
				die("route request");
			if (ask_generic(gn))
				die("generic request");
			say("check %lu route=%u generic=%u ok", checks, port(rt), port(gn));
		}
		struct pollfd p = {rt, POLLIN, 0};
		if (poll(&p, 1, 20) > 0 && (p.revents & POLLIN)) {
			int n = recv(rt, buf, sizeof buf, MSG_DONTWAIT);
			if (n > 0)
				handle(buf, n, 0);
		}
		say("tick %lu", tick);
	}
}
