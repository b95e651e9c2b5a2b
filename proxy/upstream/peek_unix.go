//go:build unix

package upstream

import (
	"net"
	"syscall"
)

// peekNothing reports whether c has nothing to read and is not at EOF,
// without reading: one non-blocking recv with MSG_PEEK (Go's sockets are
// non-blocking, so an idle socket answers EAGAIN).
func peekNothing(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	idle := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
		idle = rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK
		return true // never wait for readability
	})
	return err == nil && idle
}
