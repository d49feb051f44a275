package core

// Socket describes a socket fd. Its fields are filled by source's socket
// dumper and read by target's socket restorer.
type Socket struct {
	Family   int    `json:"family"`   // AF_UNIX, AF_INET, AF_INET6
	Type     int    `json:"type"`     // SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
	Protocol int    `json:"protocol"` // IPPROTO_*
	Ino      uint64 `json:"ino"`      // socket inode on the dumping host
	State    string `json:"state"`    // "listen", "bound", "unbound", "connected"
	// Peer is the inode of the connected peer for unix sockets inside the
	// image (socketpairs and connected pairs).
	Peer uint64 `json:"peer,omitempty"`
	// Local and Remote addresses, as text ("/path", "@abstract", "1.2.3.4:80", "[::1]:80").
	Local  string `json:"local,omitempty"`
	Remote string `json:"remote,omitempty"`
	// Backlog of a listening socket.
	Backlog int `json:"backlog,omitempty"`
	// Options are socket options as level/name/value triples.
	Options []SockOpt `json:"options,omitempty"`
	// Queue names a blob with the bytes queued for reading (unix sockets),
	// as length-prefixed records for datagram sockets.
	Queue string `json:"queue,omitempty"`
	// Shutdown is the SHUT_* state of a connected socket.
	Shutdown int `json:"shutdown,omitempty"`
}

// SockOpt is one integer socket option.
type SockOpt struct {
	Level int    `json:"level"`
	Name  int    `json:"name"`
	Value int    `json:"value"`
	Label string `json:"label,omitempty"` // for people: "SO_REUSEADDR"
	// Bytes holds a non-integer value (TCP_CONGESTION, SO_BINDTODEVICE).
	Bytes []byte `json:"bytes,omitempty"`
}
