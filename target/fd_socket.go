package target

import (
	"fmt"
	"os"

	"migrate/core"
)

// openSocket recreates, in the agent, the socket fd describes.
func (r *restorer) openSocket(fd *core.FD) (*os.File, error) {
	return nil, fmt.Errorf("fd %d: sockets are not supported yet", fd.FD)
}
