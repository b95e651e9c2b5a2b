//go:build !unix

package proxy

import (
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
)

func peek(c net.Conn, p []byte) (int, error) { return 0, errors.New("peek: not supported") }

func readProxyHeader(c net.Conn, _ time.Time) (*proxyproto.Header, net.Conn, error) {
	return readProxyHeaderBuffered(c)
}

type spareFD struct{}

func (*spareFD) acquire()      {}
func (*spareFD) release() bool { return false }

// FileLimitConnections returns 0 (no limit) where the open-file limit
// cannot be read.
func FileLimitConnections() int { return 0 }

func outOfFiles(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}
