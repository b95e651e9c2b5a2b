package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Splicing after login. crypto/tls rules out splice(2) towards the client,
// so bytes are copied in user space, and the copy loops are shaped for the
// common case of thousands of idle IMAP sessions (notes: libraries.md §5):
//
//   - from a *net.TCPConn, the loop waits for readability inside
//     RawConn.Read and takes a pooled 16 KiB buffer only once data is there,
//     so an idle direction holds no buffer at all;
//   - from a *tls.Conn (which has its own record buffer), the loop blocks on
//     a pooled 512-byte buffer and switches to a pooled 16 KiB one while
//     reads come back full, so bulk transfers still move whole TLS records;
//   - with a poller (Linux), a direction that has read nothing for
//     parkAfter gives up its goroutine (and its buffer) and waits in the
//     server's epoll set instead. Both directions park, so an idle session
//     holds no goroutine at all; the idle timeout is a timer, and the
//     session ends in whichever goroutine ends its last direction. A
//     direction woken for a little data parks again after parkQuick.
//
// io.Copy and io.CopyBuffer are avoided on purpose: with a *net.TCPConn on
// either side they pick ReadFrom/WriteTo and allocate 32 KiB per direction
// behind our back.

const (
	spliceBufSize = 16 << 10 // the largest TLS record
	spliceIdleBuf = 512
)

// halfCloseGrace is how long the other direction may go on after one has
// ended with EOF. A variable so that tests can shorten it.
var halfCloseGrace = 30 * time.Second

// parkAfter is how long a direction waits for data in its own goroutine
// before parking with the poller. Long enough that a session moving data
// never parks between two reads; short next to how long IMAP clients stay
// idle. A variable so that tests can shorten it.
var parkAfter = defaultParkAfter

const defaultParkAfter = time.Second

// A direction that the poller woke for a little data (an IDLE
// notification, a command) parks again after parkQuick rather than
// parkAfter, until it has carried more than quickBytes: Dovecot sends
// "* OK Still here" to all the IDLE sessions of one client address at
// the same moment, and behind a proxy that is every session, so a second
// of goroutines for each of them would be a spike of thousands of stacks
// every two minutes.
const (
	parkQuick  = 2 * time.Millisecond
	quickBytes = 4 << 10
)

// A direction's state. The zero value is running: a direction that has not
// started yet is not parked, so closeBoth leaves it to end by itself.
const (
	dirRunning = iota
	dirParked
	dirDone
)

// The two directions of a splicer, indexes into splicer.dirs.
const (
	dirUp   = 0 // client->backend
	dirDown = 1 // backend->client
)

// errParked ends a copy loop whose direction the poller now holds.
var errParked = errors.New("proxy: direction parked")

// errIdle ends a session that has carried no byte for its idle timeout.
var errIdle = fmt.Errorf("proxy: spliced session idle: %w", os.ErrDeadlineExceeded)

// minIdle is the shortest idle timeout a spliced session may get: RFC 9051
// §5.4 (autologout timer ≥ 30 min; IDLE clients stay silent up to 29 min).
// A variable so that tests can shorten it.
var minIdle = 30 * time.Minute

var (
	spliceBufPool = sync.Pool{New: func() any { b := make([]byte, spliceBufSize); return &b }}
	smallBufPool  = sync.Pool{New: func() any { b := make([]byte, spliceIdleBuf); return &b }}
)

// tcpBufPool serves reads from a plain TCP backend. They are larger than a
// TLS record so that a FETCH burst costs a quarter of the read system
// calls; crypto/tls cuts the data into records anyway.
var tcpBufPool = sync.Pool{New: func() any { b := make([]byte, 4*spliceBufSize); return &b }}

// splice copies client<->backend until both directions are done. It owns
// both conns and closes them before returning. There is no idle timeout.
func splice(ctx context.Context, client, backend net.Conn) (toBackend, toClient int64, err error) {
	var p splicer
	return p.splice(ctx, client, backend)
}

// A splicer joins a logged-in client to its backend. The zero value works.
type splicer struct {
	// batch collects the TLS records of one large write to the client
	// into one system call; nil when the client is not a batching TLS
	// connection.
	batch *batchConn

	// Idle closes the session when neither direction has carried a byte for
	// this long. Zero means no idle timeout; shorter than 30 minutes counts
	// as 30 minutes.
	Idle time.Duration

	// poller, when set, takes over a direction after parkAfter without
	// data, so that an idle session holds no goroutine. nil: a goroutine
	// per direction for the whole session.
	poller *poller
	dirs   [2]direction // dirUp and dirDown
	live   atomic.Int32 // directions not done yet

	ctx     context.Context
	stopCtx func() bool // stops the context.AfterFunc
	onDone  func(toBackend, toClient int64, err error)

	toBackend, toClient atomic.Int64

	client, backend net.Conn
	idle            time.Duration
	idleTimer       *time.Timer                // with an idle timeout; set before the directions start
	epoch           time.Time                  // lastActive is measured from here (monotonic)
	lastActive      atomic.Int64               // ns since epoch of the last read, either direction
	grace           atomic.Pointer[time.Timer] // started when the first direction ends with EOF
	closed          atomic.Bool                // closeBoth has run
	closeOnce       sync.Once
	errMu           sync.Mutex
	err             error // first error that ended the session

	// Framing, for kicks (kick.go). downMu is held around every write to
	// the client by the backend->client direction and by a kick, so that
	// down always describes exactly what the client has received and a BYE
	// never lands inside a response.
	downMu sync.Mutex
	down   framer // backend->client; guarded by downMu
	up     framer // client->backend; owned by that direction
	// pop frames a POP3 session instead of down and up (pop3framer.go);
	// nil for IMAP.
	pop        *pop3Framer
	compressed atomic.Bool
	kickMsg    atomic.Pointer[[]byte] // the BYE line of a pending kick
	kickEnded  bool                   // the kick has ended the session; guarded by downMu
	kickTimer  atomic.Pointer[time.Timer]
}

// A direction copies one side to the other (see ends). It runs in a
// goroutine of its own, or, with a poller and an idle socket, is parked.
// Kept small: an idle session is mostly its splicer and its TLS state.
type direction struct {
	rc     syscall.RawConn // the source's socket when the direction parks; nil: it never does
	pk     parking
	resume func()       // for the poller; one func value for the session's life
	state  atomic.Int32 // dirRunning, dirParked or dirDone
}

// ends returns the conn d reads from and the one it writes to.
func (p *splicer) ends(d *direction) (src, dst net.Conn) {
	if d == &p.dirs[dirUp] {
		return p.client, p.backend
	}
	return p.backend, p.client
}

// write passes a chunk that d has read on to its other side, through
// writeBackend or writeClient, which follow the frames on the way, and
// counts what was written.
func (p *splicer) write(d *direction, b []byte) (int, error) {
	var n int
	var err error
	if d == &p.dirs[dirUp] {
		n, err = p.writeBackend(b)
		p.toBackend.Add(int64(n))
	} else {
		n, err = p.writeClient(b)
		p.toClient.Add(int64(n))
	}
	return n, err
}

// splice runs the session and returns when both directions are done; see
// the package-level splice. The byte counts can also be read while it runs.
func (p *splicer) splice(ctx context.Context, client, backend net.Conn) (toBackend, toClient int64, err error) {
	done := make(chan struct{})
	p.start(ctx, client, backend, func(b, c int64, e error) {
		toBackend, toClient, err = b, c, e
		close(done)
	})
	<-done
	return toBackend, toClient, err
}

// start runs the session: the backend->client direction in a new
// goroutine, the client->backend one in this goroutine until it parks or
// ends. Both run until EOF: an EOF is passed on as a half-close and the
// other direction then gets halfCloseGrace to finish. Any other error, the
// idle timeout and ctx being done close both at once. done is called once
// both directions are over and both conns closed, in the goroutine that
// ended the last direction (never one holding downMu).
func (p *splicer) start(ctx context.Context, client, backend net.Conn, done func(toBackend, toClient int64, err error)) {
	if p.client == nil {
		// Not set by the session already (a kick may be reading them).
		p.client, p.backend = client, backend
	}
	p.batch = batchFor(client)
	p.ctx, p.onDone = ctx, done
	for i := range p.dirs {
		d := &p.dirs[i]
		if p.poller != nil {
			src, _ := p.ends(d)
			d.rc = socketOf(src) // nil: no socket to park on, d keeps its goroutine
		}
		d.resume = func() {
			if d.state.CompareAndSwap(dirParked, dirRunning) {
				p.run(d, true)
			}
		}
	}
	if p.Idle > 0 {
		p.idle = max(p.Idle, minIdle)
		p.epoch = time.Now()
		// Armed only once stored: idleCheck reads the field.
		p.idleTimer = time.AfterFunc(time.Duration(math.MaxInt64), p.idleCheck)
		p.idleTimer.Reset(p.idle)
	}
	p.live.Store(2)
	p.stopCtx = context.AfterFunc(ctx, p.closeBoth)
	go p.run(&p.dirs[dirDown], false)
	p.run(&p.dirs[dirUp], false)
}

// run copies d until it parks or ends; woken says that the poller resumed
// it. spliceToBackend and spliceToClient exist so that stack dumps say
// which direction a goroutine copies.
func (p *splicer) run(d *direction, woken bool) {
	if d == &p.dirs[dirUp] {
		p.spliceToBackend(woken)
	} else {
		p.spliceToClient(woken)
	}
}

func (p *splicer) spliceToBackend(woken bool) { p.copyDir(&p.dirs[dirUp], woken) }

func (p *splicer) spliceToClient(woken bool) { p.copyDir(&p.dirs[dirDown], woken) }

func (p *splicer) copyDir(d *direction, woken bool) {
	err := p.copy(d, newLinger(woken))
	if err == errParked {
		return // the poller resumes the direction in a new goroutine
	}
	d.state.Store(dirDone)
	_, dst := p.ends(d)
	p.finish(dst, err)
	p.ended(1)
}

// ended counts n directions as done; the last one ends the session.
func (p *splicer) ended(n int32) {
	if p.live.Add(-n) == 0 {
		p.complete()
	}
}

// complete ends the session once both directions are done.
func (p *splicer) complete() {
	p.closeBoth()
	p.stopCtx()
	for _, t := range []*time.Timer{p.kickTimer.Load(), p.grace.Load(), p.idleTimer} {
		if t != nil {
			t.Stop()
		}
	}
	p.errMu.Lock()
	err := p.err
	p.errMu.Unlock()
	if p.ctx.Err() != nil {
		err = context.Cause(p.ctx)
	}
	p.onDone(p.toBackend.Load(), p.toClient.Load(), err)
}

// park hands d to the poller once a read has waited parkAfter in vain. A
// TLS source's tls.Conn may hold the start of a record then, but never a
// whole one (it would have been returned), so the socket turning readable
// is still what to wait for.
//
// park reports false when the direction must carry on in this goroutine
// (the socket could not be armed); true means the goroutine must return at
// once without touching the direction: it is parked, or already ended.
func (p *splicer) park(d *direction) bool {
	src, _ := p.ends(d)
	src.SetReadDeadline(time.Time{}) // a resumed loop sets its own
	d.state.Store(dirParked)
	if err := p.poller.park(&d.pk, d.rc, d.resume); err != nil {
		// Not armed. Carry on unless closeBoth ended the direction in
		// the meantime.
		return !d.state.CompareAndSwap(dirParked, dirRunning)
	}
	// closeBoth may have run before the direction was marked parked, and
	// then left it to us.
	if p.closed.Load() && d.state.CompareAndSwap(dirParked, dirDone) {
		p.poller.forget(&d.pk)
		p.ended(1)
	}
	return true
}

// copy runs d's copy loop until it ends or parks.
func (p *splicer) copy(d *direction, l linger) error {
	src, _ := p.ends(d)
	if tc, ok := src.(*net.TCPConn); ok {
		return p.copyFromTCP(d, tc, l)
	}
	return p.copyBuffered(d, src, l)
}

// finish is called when the copy into dst has ended with err (nil = EOF).
func (p *splicer) finish(dst net.Conn, err error) {
	if err != nil {
		p.setErr(err)
		p.closeBoth()
		return
	}
	// Pass the EOF on. The other direction, which reads from dst, gets a
	// bounded time to finish (say, Dovecot's BYE after a client EOF).
	closeWrite(dst)
	// A timer rather than a read deadline: a parked direction has no read
	// to time out.
	if p.grace.Load() == nil {
		t := time.AfterFunc(halfCloseGrace, p.closeBoth)
		if !p.grace.CompareAndSwap(nil, t) {
			t.Stop() // the other direction ended too, at the same moment
		}
	}
}

func (p *splicer) setErr(err error) {
	p.errMu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.errMu.Unlock()
}

// closeBoth closes both conns and ends the parked directions; running ones
// end by themselves on the closed conns. It may run under downMu (a kick),
// so a session that it ends is completed in a goroutine of its own.
func (p *splicer) closeBoth() {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		p.client.Close()
		p.backend.Close()
		// Closing a socket drops its epoll registration without an event,
		// so parked directions are ended here.
		var n int32
		for i := range p.dirs {
			d := &p.dirs[i]
			if d.state.CompareAndSwap(dirParked, dirDone) {
				p.poller.forget(&d.pk)
				n++
			}
		}
		if n > 0 {
			go p.ended(n)
		}
	})
}

func (p *splicer) touch() {
	if p.idle > 0 {
		p.lastActive.Store(int64(time.Since(p.epoch)))
	}
}

// idleCheck runs when the idle timer fires: it ends the session if neither
// direction has read anything for the idle timeout, or sets the timer to
// the new end of the idle period. Reads only record the time, so a busy
// session costs no timer update per read.
func (p *splicer) idleCheck() {
	if p.closed.Load() {
		return
	}
	next := p.epoch.Add(time.Duration(p.lastActive.Load()) + p.idle)
	if d := time.Until(next); d > 0 {
		p.idleTimer.Reset(d)
		if p.closed.Load() {
			p.idleTimer.Stop() // complete's Stop may have come first
		}
		return
	}
	p.setErr(errIdle)
	p.closeBoth()
}

// readFailed decides what a copy loop does after a read error: read again
// (a parking that did not take), or end with the error it returns,
// errParked when the direction is now parked.
func (p *splicer) readFailed(d *direction, err error) (again bool, _ error) {
	if d.rc != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		if p.park(d) {
			return false, errParked
		}
		return true, nil
	}
	return false, err
}

// A linger is how long a copy loop of a parking direction waits for more
// data before the direction parks: parkQuick for a direction that the
// poller woke, until it has carried more than quickBytes, else parkAfter.
type linger struct {
	wait    time.Duration
	carried int
	armed   time.Time // when the read deadline was last set
}

func newLinger(woken bool) linger {
	if woken {
		return linger{wait: parkQuick}
	}
	return linger{wait: parkAfter}
}

// arm sets src's read deadline to wait from now. While data flows it does
// so at most once per wait/4 rather than before every read, so a direction
// parks between 3/4 wait and wait after its last read.
func (l *linger) arm(src net.Conn) {
	now := time.Now()
	if now.Sub(l.armed) < l.wait/4 {
		return
	}
	src.SetReadDeadline(now.Add(l.wait))
	l.armed = now
}

// carry counts n bytes read: a woken direction that carries more than a
// little is busy, and waits parkAfter from now on.
func (l *linger) carry(n int) {
	l.carried += n
	if l.wait == parkQuick && l.carried > quickBytes {
		l.wait = parkAfter
		l.armed = time.Time{}
	}
}

// copyFromTCP copies from a plain TCP source without holding a buffer while
// waiting: the buffer is taken from the pool only inside the readiness
// callback, once the socket has data.
func (p *splicer) copyFromTCP(d *direction, src *net.TCPConn, l linger) error {
	rc := d.rc
	if rc == nil {
		var err error
		if rc, err = src.SyscallConn(); err != nil {
			return err
		}
	}
	for {
		var bp *[]byte
		var n int
		var rerr error
		if d.rc != nil {
			l.arm(src)
		}
		err := rc.Read(func(fd uintptr) bool {
			bp = tcpBufPool.Get().(*[]byte)
			for {
				n, rerr = syscall.Read(int(fd), *bp)
				if rerr != syscall.EINTR {
					break
				}
			}
			if rerr == syscall.EAGAIN {
				tcpBufPool.Put(bp)
				bp = nil
				return false // wait for readability, bufferless
			}
			return true
		})
		if err == nil && rerr != nil {
			err = os.NewSyscallError("read", rerr)
		}
		if err == nil && n == 0 {
			err = io.EOF
		}
		if n > 0 {
			p.touch()
			l.carry(n)
			if _, werr := p.write(d, (*bp)[:n]); werr != nil {
				tcpBufPool.Put(bp)
				return werr
			}
		}
		if bp != nil {
			tcpBufPool.Put(bp)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if again, err := p.readFailed(d, err); !again {
				return err
			}
			l.armed = time.Time{} // the parking did not take: a new deadline
		}
	}
}

// copyBuffered copies from a source with its own buffering (a *tls.Conn,
// or any other net.Conn): it blocks on a small buffer and uses a pooled
// 16 KiB one only while reads fill the buffer they are given.
func (p *splicer) copyBuffered(d *direction, src net.Conn, l linger) error {
	sp := smallBufPool.Get().(*[]byte)
	small := *sp
	buf := small
	var big *[]byte
	rest := false
	defer func() {
		smallBufPool.Put(sp)
		if big != nil {
			spliceBufPool.Put(big)
		}
	}()
	for {
		if d.rc != nil {
			l.arm(src)
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			p.touch()
			l.carry(n)
			if _, werr := p.write(d, buf[:n]); werr != nil {
				return werr
			}
		}
		switch {
		case big == nil:
			if n == len(small) { // a burst, or at least a large record
				big = spliceBufPool.Get().(*[]byte)
				buf = *big
				rest = true
			}
		case rest && len(small)+n == len(buf):
			// The rest of a full-size record that the small read started:
			// bulk data, keep the big buffer.
			rest = false
		case rest || n < len(buf):
			// A smaller record ended: the client is back to commands.
			rest = false
			spliceBufPool.Put(big)
			big = nil
			buf = small
		}
		if rerr == io.EOF {
			return nil // TCP FIN, or TLS close_notify
		}
		if rerr != nil {
			if again, err := p.readFailed(d, rerr); !again {
				return err
			}
			l.armed = time.Time{} // the parking did not take: a new deadline
		}
	}
}

// socketOf returns the raw socket under a connection, plain or TLS, or nil
// when there is none to park on.
func socketOf(c net.Conn) syscall.RawConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if bc, ok := c.(*batchConn); ok {
		c = bc.Conn
	}
	// Anything else between the tls.Conn and the socket (prefixConn after
	// a STARTTLS with bytes read ahead) may hold data of its own.
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// closeWrite half-closes c. For TLS that is close_notify followed by a TCP
// FIN: tls.Conn.CloseWrite alone sends no FIN, so a backend or client would
// not see EOF.
func closeWrite(c net.Conn) {
	type closeWriter interface{ CloseWrite() error }
	if tc, ok := c.(*tls.Conn); ok {
		tc.CloseWrite()
		c = tc.NetConn()
	}
	switch c := c.(type) {
	case closeWriter:
		c.CloseWrite()
	case interface{ TCPConn() (*net.TCPConn, error) }: // go-proxyproto's Conn
		if tcp, err := c.TCPConn(); err == nil {
			tcp.CloseWrite()
		}
	}
}
