// Package cluster builds a small cluster of "nodes" on one Linux machine for
// migrate's end-to-end tests and its demo: two agent nodes, A and B, each
// running `migrate serve`, and a client node, joined by a switch.
//
// # Layout
//
//	        switch netns (bridge br0, no addresses)
//	       /              |                \
//	 veth port-a      veth port-b       veth port-client
//	     |                |                  |
//	node A: eth0      node B: eth0      client: eth0
//	10.231.0.1/24     10.231.0.2/24     10.231.0.3/24
//	fd00:231::1/64    fd00:231::2/64    fd00:231::3/64
//	+ VIP 10.231.0.100/32, fd00:231::100/128 (on one agent node at a time)
//
// Each node is a network namespace of its own. A and B also have a PID, a
// mount and an IPC namespace: their `migrate serve` runs as PID 1 there (ip
// netns exec NS unshare --pid --fork --kill-child --mount-proc --ipc
// migrate serve ...), so a PID used on A is free on B, /proc inside a node
// shows that node's processes, each node has its own System V segments,
// and killing the service ends every process of the node.
// The client node has a network namespace only. The bridge lives in a
// "switch" namespace of its own: nothing (no address, no device) is added
// to the machine's own network namespace. Each node hands out PIDs from a
// range of its own (A from 10001, B from 20001), as separate hosts would:
// the husk `migrate serve` creates for an incoming process must not take
// the PID that process wants.
//
// # Names and cleanup
//
// Every namespace is named Prefix + run id + "-" + node, where the run id
// holds the PID and start time of the process that built the cluster; the
// cluster's directory (secret, logs) is $TMPDIR/Prefix + run id + "-*".
// New first removes what earlier runs whose process is gone (a crashed
// test or demo) left: it kills the processes `ip netns pids` lists in
// their namespaces, only those, deletes the namespaces, and removes their
// directories. A live run's are left alone, so clusters of several
// processes can coexist (their addresses are the same, but each cluster's
// network is its own). Close tears everything down; it is idempotent, and
// tests call it from t.Cleanup.
//
// # The service address (VIP)
//
// The VIP starts on A. The migration moves it: with `--address` on
// `migrate serve` and `migrate --to` (Cluster.Address: in-process, over
// netlink, with the announcements below sent by migrate itself), or with
// shell hooks (Options.Hooks HooksOn, or a migrate without --address):
// the source's
// post-dump hook removes the VIP (the original is frozen and its network
// locked by then), its abort hook puts it back if it had removed it; the
// target's pre-resume hook adds it while the restored process is still
// stopped (its sockets exist already: the target binds them with
// IP_FREEBIND and routes them with IP_TRANSPARENT until the address
// arrives) and announces it, its abort hook removes it again. The hooks
// remember what they did in a mark file per node, so one migration at a
// time per node. Without hooks, Cluster.Migrate moves the VIP itself once
// the target runs the process: too late for established connections (the
// old node answers the client with resets meanwhile).
//
// The client must learn the VIP's new link-layer address at once, or its
// packets go on to the old node for seconds (a stale neighbour entry is
// only re-probed after delay_first_probe_time, 5 s). The new holder
// announces it. For IPv4, an unsolicited ARP request (sender and target
// both the VIP): the hooks run arping -U (package iputils-arping) in the
// background, since arping waits a second after sending; MoveVIP sends
// the same frame itself, from a packet socket, before it returns. For
// IPv6, an unsolicited neighbour advertisement, which the kernel sends by
// itself when an address is added with ndisc_notify=1 and accept_dad=0 on
// the node (an address added with "nodad" would skip it). Both override
// the client's existing entry, whatever its state (TestNodeVIP: the client
// reaches the new holder within milliseconds). A short base_reachable_time
// on the client was the other way; it only shortens the wait, and makes
// every client of a real network pay for it.
//
// # Processes on nodes
//
// Node.Command runs a command inside a node (nsenter into the service's
// network, PID, mount and IPC namespaces; ip netns exec for the client).
// Node.Start runs a long-lived one, optionally at a chosen PID
// (StartOptions.PID, to take a PID on the target), and reports its PID
// both as the machine sees it and as the node sees it (NSpid); Node.Procs,
// Node.Find and Cluster.Locate list what runs where. Like os/exec, Start
// passes on the caller's file descriptors that are not close-on-exec: a
// caller that inherited some marks them first (testutil.Main and the demo
// do), or migrate would rightly refuse a workload holding a pipe to an
// outside process. Node.Dial and Node.Listen open sockets inside a node
// from the calling Go process (on a thread switched into the node's
// network namespace).
//
// Cluster.Migrate runs `migrate --to` on a node and returns its JSON
// report (Result), with an *ExitError if migrate failed;
// Cluster.StartMigration lets a test watch its stderr (WaitStderr) and
// strike meanwhile: Cluster.CutLink (the node's switch port down: no
// reset, silence), Node.KillServe (the node's service and everything on
// the node killed; StartServe starts a new one).
//
// The package prints nothing: what it runs and what that said go to
// Options.Log.
package cluster
