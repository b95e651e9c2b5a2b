package proxy

import (
	"context"
	"net"
	"os"
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

// clientKeepAlive is the keep-alive of client connections.
var clientKeepAlive = net.KeepAliveConfig{
	Enable: true, Idle: ClientKeepAliveIdle, Interval: ClientKeepAliveInterval, Count: ClientKeepAliveCount,
}

// FileListener is net.FileListener for a listening socket that Listen
// did not open in this process: one handed on by an upgrade, or by
// systemd. The standard library gives the connections of such a listener
// its default keep-alive (probes after 15 s), whatever the socket says,
// so each accepted connection is given the client keep-alive instead,
// at four system calls per accept. The listener still has File, for the
// next upgrade. f is the caller's, to close.
func FileListener(f *os.File) (net.Listener, error) {
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, err
	}
	if tl, ok := ln.(*net.TCPListener); ok {
		return &fileListener{tl}, nil
	}
	return ln, nil
}

type fileListener struct{ *net.TCPListener }

func (l *fileListener) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	// An error here is a peer gone already, which its first read tells
	// the session; failing Accept would stop the listener.
	c.SetKeepAliveConfig(clientKeepAlive)
	return c, nil
}
