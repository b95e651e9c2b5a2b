package proxy

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"
)

// A poller holds the backend->client direction of idle spliced sessions in
// one epoll set, so that an idle session costs one goroutine (the client's
// TLS reader) instead of two. A direction that has read nothing for
// parkAfter gives up its goroutine and parks here; when its backend socket
// becomes readable, the poller starts a new goroutine to resume it.
//
// Each park arms the socket once (EPOLLONESHOT, level-triggered), so data
// that arrived between the direction's last read and the arming still
// raises an event. Registrations are keyed by a number, never by file
// descriptor: a socket's registration goes away when the socket is closed,
// and a later socket that reuses the descriptor number cannot be mistaken
// for it.
type poller struct {
	epfd int
	wake [2]int // a pipe whose read end ends run

	mu     sync.Mutex
	parked map[uint64]func() // registration -> resume, while armed
	next   uint64
	closed bool

	done chan struct{} // closed when run has returned
}

// wakeKey is the registration of the pipe that ends run.
const wakeKey = 0

func newPoller() (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	pl := &poller{epfd: epfd, parked: make(map[uint64]func()), done: make(chan struct{})}
	if err := syscall.Pipe2(pl.wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil, os.NewSyscallError("pipe2", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setKey(&ev, wakeKey)
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, pl.wake[0], &ev); err != nil {
		pl.closeFDs()
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	go pl.run()
	return pl, nil
}

// A parking is one direction's registration with the poller. The zero value
// is not registered yet.
type parking struct {
	key   uint64
	added bool // the socket is in the epoll set (armed or spent)
}

// park arms rc's socket and calls resume in a new goroutine once it is
// readable. The caller must not touch the direction's state after a
// successful park: resume may already be running. An error means the
// socket was not armed (closed meanwhile, or the poller is closed).
func (pl *poller) park(pk *parking, rc syscall.RawConn, resume func()) error {
	pl.mu.Lock()
	if pl.closed {
		pl.mu.Unlock()
		return errPollerClosed
	}
	if pk.key == 0 {
		pl.next++
		pk.key = pl.next
	}
	pl.parked[pk.key] = resume
	pl.mu.Unlock()

	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	setKey(&ev, pk.key)
	var ctlErr error
	// Control holds the descriptor open for the call, so it cannot be
	// closed and reused by another socket under us.
	err := rc.Control(func(fd uintptr) {
		op := syscall.EPOLL_CTL_MOD
		if !pk.added {
			op = syscall.EPOLL_CTL_ADD
		}
		ctlErr = syscall.EpollCtl(pl.epfd, op, int(fd), &ev)
		if ctlErr == nil {
			pk.added = true
		}
	})
	if err == nil && ctlErr != nil {
		err = os.NewSyscallError("epoll_ctl", ctlErr)
	}
	if err != nil {
		pl.forget(pk)
		return fmt.Errorf("proxy: park: %w", err)
	}
	return nil
}

// forget drops pk's pending resume, if any: its session has ended.
func (pl *poller) forget(pk *parking) {
	pl.mu.Lock()
	delete(pl.parked, pk.key)
	pl.mu.Unlock()
}

var errPollerClosed = errors.New("proxy: poller closed")

// run waits for readable sockets and resumes their directions.
func (pl *poller) run() {
	defer close(pl.done)
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(pl.epfd, events, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			// Not expected with valid arguments; without the loop no parked
			// direction would ever resume, so end them.
			pl.shut()
			return
		}
		for i := range n {
			k := key(&events[i])
			if k == wakeKey {
				return
			}
			pl.mu.Lock()
			resume := pl.parked[k]
			delete(pl.parked, k)
			pl.mu.Unlock()
			if resume != nil {
				go resume()
			}
		}
		if n > 1 {
			// Let this batch run before taking the next: when many
			// sessions wake at once, the goroutines (and stacks) in
			// flight stay about one batch, not one per session.
			runtime.Gosched()
		}
	}
}

// shut marks the poller closed and resumes every parked direction, which
// then finds its connections closed or carries on as a goroutine.
func (pl *poller) shut() {
	pl.mu.Lock()
	pl.closed = true
	parked := pl.parked
	pl.parked = map[uint64]func(){}
	pl.mu.Unlock()
	for _, resume := range parked {
		go resume()
	}
}

// close ends run and releases the epoll set. The server calls it once no
// session is left.
func (pl *poller) close() {
	pl.shut()
	syscall.Write(pl.wake[1], []byte{0})
	<-pl.done
	pl.closeFDs()
}

func (pl *poller) closeFDs() {
	syscall.Close(pl.wake[0])
	syscall.Close(pl.wake[1])
	syscall.Close(pl.epfd)
}

// setKey and key keep a registration number in the event's 64 bits of
// user data (Fd and Pad in the syscall package's layout).
func setKey(ev *syscall.EpollEvent, k uint64) {
	ev.Fd = int32(uint32(k))
	ev.Pad = int32(uint32(k >> 32))
}

func key(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
