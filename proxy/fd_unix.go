//go:build unix

package proxy

import (
	"errors"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
)

// peek waits for data on c's socket, within its read deadline, and copies
// what has arrived into p without consuming it.
func peek(c net.Conn, p []byte) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, errors.New("peek: not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, _, rerr = syscall.Recvfrom(int(fd), p, syscall.MSG_PEEK)
			if rerr != syscall.EINTR {
				return rerr != syscall.EAGAIN
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, rerr
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readProxyHeader reads the PROXY protocol header at the start of c, and
// exactly its bytes: it looks at what has arrived without consuming it,
// then reads as much as the header is long. A header that arrives in
// pieces (the sender should send it at once) is waited for until deadline.
func readProxyHeader(c net.Conn, deadline time.Time) (*proxyproto.Header, net.Conn, error) {
	if _, ok := c.(syscall.Conn); !ok {
		return readProxyHeaderBuffered(c)
	}
	buf := make([]byte, 256)
	for {
		n, err := peek(c, buf)
		if err != nil {
			return nil, c, err
		}
		hl, err := proxyHeaderLen(buf[:n])
		switch {
		case err == nil && hl == 0:
			return nil, c, proxyproto.ErrNoProxyProtocol
		case err == nil:
			h, err := parseProxyHeader(buf[:hl])
			if err != nil {
				return nil, c, err
			}
			_, err = io.ReadFull(c, buf[:hl])
			return h, c, err
		}
		if hl > len(buf) {
			if hl > 16+int(proxyproto.MaxV2HeaderSize) {
				return nil, c, proxyproto.ErrInvalidLength
			}
			buf = make([]byte, hl)
			continue
		}
		if !time.Now().Before(deadline) {
			return nil, c, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// spareFD is a descriptor held in reserve: when accept fails because the
// process is out of descriptors, it is given up for one accept, so that
// the waiting client is refused cleanly rather than left in the backlog
// (where it would make every later accept fail at once).
type spareFD struct {
	fd   int
	held bool
}

func (f *spareFD) acquire() {
	if f.held {
		return
	}
	fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err == nil {
		f.fd, f.held = fd, true
	}
}

// release frees the spare descriptor and reports whether there was one.
func (f *spareFD) release() bool {
	if !f.held {
		return false
	}
	syscall.Close(f.fd)
	f.held = false
	return true
}

// FileLimitConnections returns the Limits.MaxConnections that fits in the
// process's open-file limit (RLIMIT_NOFILE): after a reserve of a tenth of
// it, at least 32 descriptors, for Redis, health checks, certificate
// reloads and refusals, half of the rest, since a session holds two (the
// client's and the backend's). Zero means no limit could be read.
func FileLimitConnections() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 {
		return 0
	}
	if rl.Cur > 1<<30 {
		rl.Cur = 1 << 30
	}
	n := int(rl.Cur)
	return max((n-max(32, n/10))/2, 1)
}

// outOfFiles reports whether err says the process or the system has run
// out of file descriptors.
func outOfFiles(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}
