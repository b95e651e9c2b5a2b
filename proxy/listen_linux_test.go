package proxy

import (
	"context"
	"net"
	"os"
	"syscall"
	"testing"
)

// TestListenKeepAlive: accepted connections carry the client keep-alive
// settings, on Linux inherited from the listening socket; so do those of
// a listener made from the socket's descriptor (an upgrade's, systemd's),
// which the standard library would give its own 15 s.
func TestListenKeepAlive(t *testing.T) {
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Run("Listen", func(t *testing.T) { checkKeepAlive(t, ln) })
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	fl, err := FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	t.Run("FileListener", func(t *testing.T) { checkKeepAlive(t, fl) })
	if _, ok := fl.(interface{ File() (*os.File, error) }); !ok {
		t.Error("a FileListener cannot be handed on")
	}
}

func checkKeepAlive(t *testing.T, ln net.Listener) {
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	rc, err := sc.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, int(ClientKeepAliveIdle.Seconds())},
		{"TCP_KEEPINTVL", syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, int(ClientKeepAliveInterval.Seconds())},
		{"TCP_KEEPCNT", syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, ClientKeepAliveCount},
		{"TCP_NODELAY", syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1},
	} {
		var v int
		var gerr error
		rc.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), o.level, o.opt) })
		if gerr != nil || v != o.want {
			t.Errorf("%s = %d, %v; want %d", o.name, v, gerr, o.want)
		}
	}
}
