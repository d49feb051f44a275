package source

import (
	"os"

	"migrate/core"
)

// dumpSocket describes the socket fd (the agent's duplicate is dup) into
// fd.Socket, or refuses it with an UnsupportedFDError.
//
// Preconditions: the process is frozen.
func (d *dumper) dumpSocket(set *fdSet, fd *core.FD, dup *os.File) error {
	return &UnsupportedFDError{PID: d.pid, FD: fd.FD, Kind: dup.Name(), Reason: "sockets are not supported yet"}
}
