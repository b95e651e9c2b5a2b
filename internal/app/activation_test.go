package app

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestAddrMatches(t *testing.T) {
	tcp := func(s string) net.Addr {
		a, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, tc := range []struct {
		want, got string
		ok        bool
	}{
		{":993", "[::]:993", true},
		{":993", "0.0.0.0:993", true},
		{"0.0.0.0:993", "[::]:993", true},
		{"[::]:993", "0.0.0.0:993", true},
		{":993", "127.0.0.1:993", false},
		{":993", "[::]:143", false},
		{"127.0.0.1:993", "127.0.0.1:993", true},
		{"127.0.0.1:993", "[::ffff:127.0.0.1]:993", true},
		{"127.0.0.1:993", "127.0.0.2:993", false},
		{"127.0.0.1:993", "0.0.0.0:993", false},
		{"[::1]:993", "[::1]:993", true},
		{"localhost:993", "127.0.0.1:993", false},
		{"127.0.0.1", "127.0.0.1:993", false},
	} {
		if ok := addrMatches(tc.want, tcp(tc.got)); ok != tc.ok {
			t.Errorf("addrMatches(%q, %s) = %v, want %v", tc.want, tc.got, ok, tc.ok)
		}
	}
	if addrMatches(":993", &net.UnixAddr{Name: "/run/x", Net: "unix"}) {
		t.Error("a unix socket matched")
	}
}

// placeFD duplicates l's socket onto descriptor fd, as systemd would
// pass it, and fails if fd is already in use.
func placeFD(t *testing.T, l interface{ File() (*os.File, error) }, fd int) {
	t.Helper()
	if fdOpen(fd) {
		t.Fatalf("descriptor %d is already in use in the test process", fd)
	}
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Dup3(int(f.Fd()), fd, 0); err != nil {
		t.Fatal(err)
	}
}

func fdOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

func TestTakeListeners(t *testing.T) {
	tcp := func() *net.TCPListener {
		l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l
	}
	a, b := tcp(), tcp()

	t.Run("tcp", func(t *testing.T) {
		placeFD(t, a, 600)
		placeFD(t, b, 601)
		lns, err := takeListeners(600, 2)
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range []net.Listener{a, b} {
			if lns[i].Addr().String() != want.Addr().String() {
				t.Errorf("listener %d on %s, want %s", i, lns[i].Addr(), want.Addr())
			}
			lns[i].Close()
		}
		for fd := 600; fd < 602; fd++ {
			if fdOpen(fd) {
				t.Errorf("descriptor %d left open after it was taken", fd)
			}
		}
	})

	t.Run("not TCP", func(t *testing.T) {
		u, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "s"), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		placeFD(t, a, 610)
		placeFD(t, u, 611)
		placeFD(t, b, 612)
		_, err = takeListeners(610, 3)
		if err == nil || !strings.Contains(err.Error(), "descriptor 611") {
			t.Fatalf("err = %v, want one about descriptor 611", err)
		}
		// The process exits on this error, but whoever calls it must not
		// be left holding the rest: a socket after the bad one stays
		// bound otherwise.
		for fd := 610; fd < 613; fd++ {
			if fdOpen(fd) {
				t.Errorf("descriptor %d left open after the error", fd)
			}
		}
	})
}
