package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/portico-mail/portico/proxy"
)

// sockets are the listening sockets of a process, by key ("client
// 127.0.0.1:993", "acme-http :80"): those inherited from the process it
// took over from at an upgrade, and those it has open, which it hands on
// at its own upgrade. A socket keeps its key across processes, so a new
// process finds the socket of each configured address in what it
// inherited, and opens only the addresses that are new.
//
// Sockets passed by systemd (socket activation, sd_listen_fds(3)) have no
// key: a listener takes the one bound to its address (see addrMatches).
//
// The zero value opens every socket itself.
//
// A nil *sockets opens every socket and remembers none.
type sockets struct {
	mu        sync.Mutex
	inherited map[string]*os.File     // owned here until taken or closed
	activated []net.Listener          // from systemd; owned here until taken or closed
	open      map[string]net.Listener // owned by their users; listed for hand-on
}

// upgradeEnv carries the inherited descriptors to the new process.
const upgradeEnv = "PORTICO_UPGRADE"

// handOn describes, in upgradeEnv, what a new process inherits.
type handOn struct {
	Ready   int            `json:"ready"`   // descriptor to write "ready\n" to
	Sockets map[string]int `json:"sockets"` // key -> descriptor
}

// inherit reads what an upgrading parent passed on, if anything, and
// removes it from the environment so that no process started later
// believes it too. ready is nil when this process was not started by an
// upgrade.
func inherit() (s *sockets, ready *os.File, err error) {
	s = &sockets{}
	if s.activated, err = listenFDs(); err != nil {
		return s, nil, err
	}
	v, ok := os.LookupEnv(upgradeEnv)
	if !ok {
		return s, nil, nil
	}
	os.Unsetenv(upgradeEnv)
	var h handOn
	if err := json.Unmarshal([]byte(v), &h); err != nil {
		return s, nil, fmt.Errorf("%s: %w", upgradeEnv, err)
	}
	s.inherited = make(map[string]*os.File, len(h.Sockets))
	for key, fd := range h.Sockets {
		syscall.CloseOnExec(fd)
		s.inherited[key] = os.NewFile(uintptr(fd), key)
	}
	syscall.CloseOnExec(h.Ready)
	return s, os.NewFile(uintptr(h.Ready), "upgrade-ready"), nil
}

// Where a listening socket came from, as listen says.
const (
	fromOpen    = ""                    // opened by this process
	fromUpgrade = "socket taken over"   // handed on by the process upgraded from
	fromSystemd = "socket from systemd" // socket activation
)

// listen returns the inherited socket of key, else a socket from systemd
// bound to key's address (the part after the first space), else opens
// one with open; from says which. The caller owns the listener and calls
// closed(key) when it closes it for good.
func (s *sockets) listen(ctx context.Context, key string, open func(ctx context.Context) (net.Listener, error)) (ln net.Listener, from string, err error) {
	if s == nil {
		ln, err := open(ctx)
		return ln, fromOpen, err
	}
	s.mu.Lock()
	f := s.inherited[key]
	delete(s.inherited, key)
	if f == nil {
		_, addr, _ := strings.Cut(key, " ")
		for i, a := range s.activated {
			if addrMatches(addr, a.Addr()) {
				ln, from = a, fromSystemd
				s.activated = slices.Delete(s.activated, i, i+1)
				break
			}
		}
	}
	s.mu.Unlock()
	switch {
	case f != nil:
		// FileListener duplicates the descriptor: ours is closed either way.
		ln, err = proxy.FileListener(f)
		f.Close()
		if err != nil {
			return nil, fromOpen, fmt.Errorf("inherited socket %s: %w", key, err)
		}
		from = fromUpgrade
	case ln == nil:
		if ln, err = open(ctx); err != nil {
			return nil, fromOpen, err
		}
	}
	s.mu.Lock()
	if s.open == nil {
		s.open = make(map[string]net.Listener)
	}
	s.open[key] = ln
	s.mu.Unlock()
	return ln, from, nil
}

// closed forgets key's listener: it is not handed on any more.
func (s *sockets) closed(key string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	delete(s.open, key)
	s.mu.Unlock()
}

// closeInherited closes the inherited sockets that the configuration no
// longer uses (the parent still has them open until it stops accepting)
// and the sockets from systemd that no listener took, whose addresses it
// returns.
func (s *sockets) closeInherited() (unused []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, f := range s.inherited {
		f.Close()
		delete(s.inherited, key)
	}
	for _, ln := range s.activated {
		unused = append(unused, ln.Addr().String())
		ln.Close()
	}
	s.activated = nil
	return unused
}

// files duplicates the open listeners' descriptors for a new process, in
// key order. The caller owns the files and closes them once the process
// has started (it has its own copies then).
func (s *sockets) files() (keys []string, files []*os.File, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key := range s.open {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	for _, key := range keys {
		fl, ok := s.open[key].(interface{ File() (*os.File, error) })
		if !ok {
			err = fmt.Errorf("socket %s cannot be handed on", key)
			break
		}
		f, ferr := fl.File()
		if ferr != nil {
			err = fmt.Errorf("socket %s: %w", key, ferr)
			break
		}
		files = append(files, f)
	}
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, err
	}
	return keys, files, nil
}

// signalReady tells the parent that this process serves. The parent reads
// "ready\n"; anything else, or the descriptor closing without it (this
// process died), means the upgrade failed.
func signalReady(f *os.File) error {
	if f == nil {
		return nil
	}
	defer f.Close()
	if _, err := f.WriteString("ready\n"); err != nil {
		return fmt.Errorf("telling the old process we are ready: %w", err)
	}
	return nil
}

// clientKey names a client listener's socket.
func clientKey(addr string) string { return "client " + addr }

// pidString is the process id as pid files hold it.
func pidString() string { return strconv.Itoa(os.Getpid()) }
