package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
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
//     a 512-byte buffer and switches to a pooled 16 KiB one while reads come
//     back full, so bulk transfers still move whole TLS records;
//   - with a poller (Linux), the backend->client direction gives up its
//     goroutine after parkAfter without data and waits in the server's
//     epoll set instead, so an idle session holds one goroutine, not two.
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

// parkAfter is how long the backend->client direction waits for data in its
// own goroutine before parking with the poller. Long enough that a session
// moving data never parks between two reads; short next to how long IMAP
// clients stay idle. A variable so that tests can shorten it.
var parkAfter = defaultParkAfter

const defaultParkAfter = time.Second

const (
	downRunning = iota
	downParked
	downDone
)

// errParked ends a copy loop whose direction the poller now holds.
var errParked = errors.New("proxy: direction parked")

// minIdle is the shortest idle timeout a spliced session may get: RFC 9051
// §5.4 (autologout timer ≥ 30 min; IDLE clients stay silent up to 29 min).
// A variable so that tests can shorten it.
var minIdle = 30 * time.Minute

var spliceBufPool = sync.Pool{New: func() any { b := make([]byte, spliceBufSize); return &b }}

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

	// poller, when set, takes over the backend->client direction after
	// parkAfter without data, so that an idle session holds one goroutine
	// instead of two. nil: a goroutine per direction for the whole session.
	poller    *poller
	pk        parking
	parkRC    syscall.RawConn // the backend's socket, with a poller
	downState atomic.Int32    // downRunning, downParked or downDone, with a poller
	downDone  chan struct{}   // closed by endDown, with a poller
	downOnce  sync.Once

	toBackend, toClient atomic.Int64

	client, backend net.Conn
	idle            time.Duration
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
	downMu     sync.Mutex
	down       framer // backend->client; guarded by downMu
	up         framer // client->backend; owned by that direction
	compressed atomic.Bool
	kickMsg    atomic.Pointer[[]byte] // the BYE line of a pending kick
	kickEnded  bool                   // the kick has ended the session; guarded by downMu
	kickTimer  atomic.Pointer[time.Timer]
}

// splice runs the session; see the package-level splice. Both directions
// run until EOF: an EOF is passed on as a half-close and the other direction
// then gets halfCloseGrace to finish. Any other error, and ctx being done,
// close both at once. The byte counts can also be read while it runs.
func (p *splicer) splice(ctx context.Context, client, backend net.Conn) (toBackend, toClient int64, err error) {
	if p.client == nil {
		// Not set by the session already (a kick may be reading them).
		p.client, p.backend = client, backend
	}
	p.batch = batchFor(client)
	if p.poller != nil {
		p.parkRC = socketOf(backend)
		if p.parkRC == nil {
			p.poller = nil // parking needs the backend's socket
		}
	}
	if p.Idle > 0 {
		p.idle = max(p.Idle, minIdle)
		p.epoch = time.Now()
		p.touch()
		dl := time.Now().Add(p.idle)
		client.SetReadDeadline(dl)
		if p.poller == nil {
			// A parking direction does without: the client's direction
			// sees both directions' activity (rearm).
			backend.SetReadDeadline(dl)
		}
	}
	stop := context.AfterFunc(ctx, p.closeBoth)
	defer stop()
	defer func() {
		for _, t := range []*time.Timer{p.kickTimer.Load(), p.grace.Load()} {
			if t != nil {
				t.Stop()
			}
		}
	}()

	if p.poller != nil {
		// The backend->client direction starts in a fresh goroutine, which
		// ends when the direction parks; this one reads the client.
		p.downDone = make(chan struct{})
		go p.spliceToClient()
		p.spliceToBackend()
		<-p.downDone
	} else {
		done := make(chan struct{})
		go func() {
			defer close(done)
			p.spliceToBackend()
		}()
		p.spliceToClient()
		<-done
	}
	p.closeBoth()

	err = p.err
	if ctx.Err() != nil {
		err = context.Cause(ctx)
	}
	return p.toBackend.Load(), p.toClient.Load(), err
}

// spliceToBackend and spliceToClient exist so that stack dumps say which
// direction a goroutine copies.
func (p *splicer) spliceToBackend() {
	p.finish(p.backend, p.copy(p.writeBackend, p.client, &p.toBackend))
}

func (p *splicer) spliceToClient() {
	err := p.copy(p.writeClient, p.backend, &p.toClient)
	if err == errParked {
		return // the poller resumes the direction in a new goroutine
	}
	p.finish(p.client, err)
	p.endDown()
}

// resumeToClient runs the backend->client direction again once the poller
// has seen its socket readable, unless closeBoth has ended it meanwhile.
func (p *splicer) resumeToClient() {
	if p.downState.CompareAndSwap(downParked, downRunning) {
		p.spliceToClient()
	}
}

// parkToClient hands the backend->client direction to the poller once a
// read has waited parkAfter in vain. A TLS backend's tls.Conn may hold the
// start of a record then, but never a whole one (it would have been
// returned), so the socket turning readable is still what to wait for.
//
// parkToClient reports false when the direction must carry on in this
// goroutine (the socket could not be armed); true means the goroutine must
// return at once without touching the direction: it is parked, or already
// ended.
func (p *splicer) parkToClient() bool {
	p.backend.SetReadDeadline(time.Time{}) // a resumed loop sets its own
	p.downState.Store(downParked)
	if err := p.poller.park(&p.pk, p.parkRC, p.resumeToClient); err != nil {
		// Not armed. Carry on unless closeBoth ended the direction in
		// the meantime.
		return !p.downState.CompareAndSwap(downParked, downRunning)
	}
	// closeBoth may have run before the direction was marked parked, and
	// then left it to us.
	if p.closed.Load() && p.downState.CompareAndSwap(downParked, downDone) {
		p.poller.forget(&p.pk)
		p.endDown()
	}
	return true
}

// endDown marks the backend->client direction finished, with a poller.
func (p *splicer) endDown() {
	if p.downDone != nil {
		p.downOnce.Do(func() { close(p.downDone) })
	}
}

// A chunkWriter passes one chunk on to the other side: writeBackend or
// writeClient, which follow the frames on the way.
type chunkWriter func([]byte) (int, error)

func (p *splicer) copy(dst chunkWriter, src net.Conn, n *atomic.Int64) error {
	if tc, ok := src.(*net.TCPConn); ok {
		return p.copyFromTCP(dst, tc, n)
	}
	return p.copyBuffered(dst, src, n)
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
	// to time out, and the idle logic (rearm) owns the read deadlines.
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

func (p *splicer) closeBoth() {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		p.client.Close()
		p.backend.Close()
		// Closing the socket drops its epoll registration without an
		// event, so a parked direction is ended here.
		if p.downState.CompareAndSwap(downParked, downDone) {
			p.poller.forget(&p.pk)
			p.endDown()
		}
	})
}

func (p *splicer) touch() {
	if p.idle > 0 {
		p.lastActive.Store(int64(time.Since(p.epoch)))
	}
}

// rearm decides, when a read deadline has passed, whether the session is
// really idle. The deadline is set only once per idle period and direction,
// not per read: a read just records the time, and an expired deadline is
// pushed to lastActive+idle if the other direction moved meanwhile.
func (p *splicer) rearm(src net.Conn, err error) bool {
	if p.idle <= 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	next := p.epoch.Add(time.Duration(p.lastActive.Load()) + p.idle)
	if !time.Now().Before(next) {
		return false // idle in both directions
	}
	src.SetReadDeadline(next)
	return true
}

// readFailed decides what a copy loop does after a read error: read again
// (a parking that did not take, or an idle deadline pushed back), or end
// with the error it returns, errParked when the direction is now parked.
func (p *splicer) readFailed(src net.Conn, parks bool, err error) (again bool, _ error) {
	if parks && errors.Is(err, os.ErrDeadlineExceeded) {
		if p.parkToClient() {
			return false, errParked
		}
		return true, nil
	}
	if p.rearm(src, err) {
		return true, nil
	}
	return false, err
}

// copyFromTCP copies from a plain TCP source without holding a buffer while
// waiting: the buffer is taken from the pool only inside the readiness
// callback, once the socket has data.
func (p *splicer) copyFromTCP(dst chunkWriter, src *net.TCPConn, count *atomic.Int64) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	parks := p.poller != nil && src == p.backend
	for {
		var bp *[]byte
		var n int
		var rerr error
		if parks {
			src.SetReadDeadline(time.Now().Add(parkAfter))
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
			wn, werr := dst((*bp)[:n])
			count.Add(int64(wn))
			if werr != nil {
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
			if again, err := p.readFailed(src, parks, err); !again {
				return err
			}
		}
	}
}

// copyBuffered copies from a source with its own buffering (a *tls.Conn,
// or any other net.Conn): it blocks on a small buffer and uses a pooled
// 16 KiB one only while reads fill the buffer they are given.
func (p *splicer) copyBuffered(dst chunkWriter, src net.Conn, count *atomic.Int64) error {
	small := make([]byte, spliceIdleBuf)
	buf := small
	var big *[]byte
	rest := false
	defer func() {
		if big != nil {
			spliceBufPool.Put(big)
		}
	}()
	parks := p.poller != nil && src == p.backend
	for {
		if parks {
			src.SetReadDeadline(time.Now().Add(parkAfter))
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			p.touch()
			wn, werr := dst(buf[:n])
			count.Add(int64(wn))
			if werr != nil {
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
			if again, err := p.readFailed(src, parks, rerr); !again {
				return err
			}
		}
	}
}

// socketOf returns the raw socket under a backend connection, plain or
// TLS, or nil when there is none to park on.
func socketOf(c net.Conn) syscall.RawConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
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
