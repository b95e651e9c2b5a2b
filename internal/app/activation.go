package app

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"

	"github.com/portico-mail/portico/proxy"
)

// Socket activation: systemd (a .socket unit) or systemd-socket-activate
// opens the listening sockets and passes them to the process it starts,
// as sd_listen_fds(3) describes: descriptors from 3 on, LISTEN_FDS of
// them, for the process LISTEN_PID. Portico needs no privilege to bind 143
// and 993 then, and connections that arrive while it restarts wait in the
// sockets' backlog instead of being refused.

// listenFDsStart is SD_LISTEN_FDS_START.
const listenFDsStart = 3

// listenFDs returns the listening sockets systemd passed to this process,
// and removes the variables that say so from the environment, so that a
// process started later (an upgrade's) does not take them for its own.
func listenFDs() ([]net.Listener, error) {
	pid, fds := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	if pid == "" || fds == "" || pid != strconv.Itoa(os.Getpid()) {
		return nil, nil
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 || n > 1024 {
		return nil, fmt.Errorf("socket activation: LISTEN_FDS=%q", fds)
	}
	return takeListeners(listenFDsStart, n)
}

// takeListeners makes listeners of the n descriptors from first on. It
// owns every one of them: on success each is closed and duplicated into
// a listener; on an error, the ones not yet taken are closed too, so
// that none is left open behind a failed start.
func takeListeners(first, n int) ([]net.Listener, error) {
	var lns []net.Listener
	for fd := first; fd < first+n; fd++ {
		syscall.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), "systemd socket "+strconv.Itoa(fd))
		// FileListener duplicates the descriptor: ours is closed either way.
		ln, err := proxy.FileListener(f)
		f.Close()
		if err == nil {
			if _, ok := ln.Addr().(*net.TCPAddr); !ok {
				ln.Close()
				err = fmt.Errorf("not a TCP socket but %s", ln.Addr().Network())
			}
		}
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			for rest := fd + 1; rest < first+n; rest++ {
				syscall.Close(rest)
			}
			return nil, fmt.Errorf("socket activation: descriptor %d: %w (Portico takes ListenStream= sockets only, without Accept=yes)", fd, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// addrMatches reports whether a socket bound to got serves the configured
// address want (host:port): the same port, and the same IP address, or
// any address for an empty or unspecified host (":993" and "0.0.0.0:993"
// take a socket bound to [::]:993 or 0.0.0.0:993). A host name matches
// nothing: systemd's ListenStream= takes addresses, and so must the
// configuration for the two to meet.
func addrMatches(want string, got net.Addr) bool {
	ta, ok := got.(*net.TCPAddr)
	if !ok {
		return false
	}
	host, port, err := net.SplitHostPort(want)
	if err != nil {
		return false
	}
	p, err := net.LookupPort("tcp", port)
	if err != nil || p != ta.Port {
		return false
	}
	gotIP, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	gotIP = gotIP.Unmap()
	if host == "" {
		return gotIP.IsUnspecified()
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	if ip.IsUnspecified() {
		return gotIP.IsUnspecified()
	}
	return ip == gotIP
}
