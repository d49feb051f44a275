package source

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/netconf"
	"github.com/procmig/migrate/core/netlock"
	"github.com/procmig/migrate/core/proc"
)

// readNet reads the configuration of the network namespace of container
// init pid, one of its own: its interfaces, addresses, routes and
// sysctls, with the name here of each veth's other end. An interface or
// route migrate does not carry is refused (a *NamespaceError of kind
// net): noteContainer calls it before anything is frozen.
func readNet(pid int) (*core.NetNamespace, error) {
	var cfg *netconf.Config
	err := proc.InNamespace(pid, unix.CLONE_NEWNET, func() (err error) {
		if cfg, err = netconf.Read(); err != nil {
			return err
		}
		return netconf.Uncarried(netlock.IsLockTable)
	})
	if u := (*netconf.UnsupportedError)(nil); errors.As(err, &u) {
		return nil, &NamespaceError{PID: pid, Kinds: []string{"net"}, Reason: u.Error()}
	}
	if err != nil {
		return nil, fmt.Errorf("network namespace of %d: %w", pid, err)
	}
	for i := range cfg.Links {
		if cfg.Links[i].Peer, err = netconf.PeerName(&cfg.Links[i]); err != nil {
			return nil, fmt.Errorf("network namespace of %d: the other end of %s: %w", pid, cfg.Links[i].Name, err)
		}
	}
	return cfg.Core(), nil
}

// leaveNetNS lets go of the network locks of a container whose network
// namespace was its own, once the original is killed: the namespace goes
// with it, the locks' tables with it. Until then a peer's segment still
// routed here is dropped, where a namespace without the connection would
// answer it with a reset; the packets the lock held have nowhere to go
// from here (the peers send them again, to the target once routed there).
func (a *liveSource) leaveNetNS() {
	if a.d.lock != nil {
		a.d.lock.Disown()
		a.d.lock = nil
	}
	if a.preLock != nil {
		a.preLock.Disown()
		a.preLock = nil
	}
	if a.hold != nil {
		pkts, _ := a.hold.Finish()
		a.hold.CloseRaw()
		a.hold = nil
		a.d.log.Info("packets held during the freeze dropped with the container's network namespace", "held", len(pkts))
	}
}
