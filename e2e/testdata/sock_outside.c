/* sock_outside: a socket migrate must refuse, next to a socketpair it
 * takes.
 *
 *   sock_outside unix PATH       a unix stream socket connected to PATH
 *   sock_outside tcp PORT        a TCP connection to 127.0.0.1:PORT
 *   sock_outside netlink         a netlink socket of a protocol migrate
 *                                refuses (NETLINK_USERSOCK)
 *   sock_outside packet          a packet socket (AF_PACKET)
 *
 * Lines: "ready pid=P fd=N" (N: the socket to refuse), "tick N". */
#include "common.h"
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int pair[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair))
		die("socketpair");
	int fd = -1;
	if (strcmp(argv[1], "unix") == 0 && argc == 3) {
		struct sockaddr_un a = {.sun_family = AF_UNIX};
		snprintf(a.sun_path, sizeof a.sun_path, "%s", argv[2]);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a))
			die("connect");
	} else if (strcmp(argv[1], "tcp") == 0 && argc == 3) {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2])),
					.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a))
			die("connect");
	} else if (strcmp(argv[1], "netlink") == 0) {
		fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_USERSOCK);
		if (fd < 0)
			die("socket");
	} else if (strcmp(argv[1], "packet") == 0) {
		fd = socket(AF_PACKET, SOCK_DGRAM, 0);
		if (fd < 0)
			die("socket");
	} else {
		return 2;
	}
	if (write(pair[0], "queued", 6) != 6)
		die("write");
	say("ready pid=%d fd=%d", getpid(), fd);
	for (unsigned long tick = 1;; tick++) {
		say("tick %lu", tick);
		msleep(20);
	}
}
