package proxy

import (
	"context"
	"net"
	"time"
)

// Client keep-alive: probes after ClientKeepAliveIdle of silence, every
// ClientKeepAliveInterval, ClientKeepAliveCount times, so that a client
// that vanished (a phone out of coverage, a NAT that forgot the flow)
// frees its session within about ten minutes. Longer than Go's 15 s
// default, which wakes 100,000 idle phones' radios every 15 s for no
// gain: their IMAP IDLE traffic shows they are alive anyway.
const (
	ClientKeepAliveIdle     = 5 * time.Minute
	ClientKeepAliveInterval = time.Minute
	ClientKeepAliveCount    = 5
)

// Listen opens a TCP listener for Serve. On Linux the keep-alive settings
// are set once on the listening socket, which accepted sockets inherit,
// instead of four system calls on every accepted connection. Elsewhere the
// standard library sets them per connection.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	lc := listenConfig()
	return lc.Listen(ctx, "tcp", addr)
}
