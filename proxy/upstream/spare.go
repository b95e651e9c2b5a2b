package upstream

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/portico-mail/portico/routing"
)

// Spares keeps spare connections to backends: connected, with TLS set up
// (implicit or STARTTLS/STLS, as the backend's TLS mode says), greeted and
// with the capabilities read, so that a login that takes one starts at
// once with ID and the credentials. Its Login and LoginPOP3 are drop-in
// replacements for the package functions:
//
//	spares := &upstream.Spares{Usable: func(b *routing.Backend) bool { return health.Up(b) }}
//	defer spares.Close()
//	srv.Login, srv.LoginPOP3 = spares.Login, spares.LoginPOP3
//
// Only backends with a Name, SpareConnections > 0 and no ProxyProtocol
// (the header names a client not known before the login) get spares, up
// to SpareConnections per service; a literal address from a route record
// is a new *routing.Backend at every lookup and never gets any. Spares are
// kept by *routing.Backend: a reload that builds new backends uses a new
// Spares and closes the old one.
//
// A backend's spares are dialled by one goroutine per backend and
// service, started by the first login there, one connection at a time,
// with a growing pause after failures. A spare older than
// SpareMaxIdle is closed, and so are all of a backend's spares when it
// has had no login for SpareMaxIdle (the goroutine then ends) or when
// Usable says no (down, drained). A spare is checked before use: if the
// backend has closed it or sent anything, or if the login on it fails
// before the backend has answered the credentials, the login runs on a
// fresh connection instead, so a dead spare costs time but never a
// login.
//
// The zero value is ready to use; after Close, logins dial as the
// package functions do.
type Spares struct {
	// Usable, when set, says whether b may hold spares now; a backend
	// that is down or drained should not.
	Usable func(b *routing.Backend) bool
	// Counters, when set, receive the counts (Stats): one may serve the
	// Spares of successive reloads, so that the counts keep growing.
	Counters *SpareCounters

	own SpareCounters // without Counters

	mu     sync.Mutex
	pools  map[poolKey]*sparePool
	ctx    context.Context // ends at Close; aborts the dials of spares
	cancel context.CancelFunc
	closed bool
	wg     sync.WaitGroup // the refill goroutines
}

// SpareStats counts what happened to logins and spares.
type SpareStats struct {
	Taken     uint64 // logins that started on a spare
	Missed    uint64 // logins to a backend with spares when none was ready
	Discarded uint64 // spares closed unused: dead, expired, backend idle, down or gone
}

// SpareCounters count what happened to logins and spares. The zero value
// is ready to use.
type SpareCounters struct {
	taken, missed, discarded atomic.Uint64
}

// Stats returns the counts so far.
func (c *SpareCounters) Stats() SpareStats {
	return SpareStats{Taken: c.taken.Load(), Missed: c.missed.Load(), Discarded: c.discarded.Load()}
}

// Stats returns the counts so far.
func (s *Spares) Stats() SpareStats { return s.counters().Stats() }

func (s *Spares) counters() *SpareCounters {
	if s.Counters != nil {
		return s.Counters
	}
	return &s.own
}

const (
	defaultSpareMaxIdle = 60 * time.Second
	// spareCheck is how often a backend holding spares is asked Usable.
	spareCheck        = time.Second
	spareBackoffFirst = time.Second
	spareBackoffMax   = 30 * time.Second
)

type poolKey struct {
	b    *routing.Backend
	addr string // b.Addr or b.POP3Addr
}

// sparePool is the spares of one backend service. Its fields are guarded
// by Spares.mu.
type sparePool struct {
	key      poolKey
	label    string
	proto    protocol
	wake     chan struct{} // a login happened: refill now
	idle     []spare       // oldest first
	lastUsed time.Time
}

// spare is an idle prepared connection; the pool owns it until take
// removes it.
type spare struct {
	c     *conn
	since time.Time
}

// Login is the package's Login, on a spare connection where one is ready.
func (s *Spares) Login(ctx context.Context, b *routing.Backend, cred Credentials, id *IDInfo) (*Result, error) {
	if b == nil {
		return Login(ctx, b, cred, id)
	}
	return s.login(ctx, b, b.Addr, b.String(), cred, id, imapProtocol, Login)
}

// LoginPOP3 is the package's LoginPOP3, on a spare connection where one
// is ready.
func (s *Spares) LoginPOP3(ctx context.Context, b *routing.Backend, cred Credentials, id *IDInfo) (*Result, error) {
	if b == nil || b.POP3Addr == "" {
		return LoginPOP3(ctx, b, cred, id)
	}
	return s.login(ctx, b, b.POP3Addr, pop3Label(b), cred, id, pop3Protocol, LoginPOP3)
}

func (s *Spares) login(ctx context.Context, b *routing.Backend, addr, label string, cred Credentials, id *IDInfo,
	p protocol, fresh func(context.Context, *routing.Backend, Credentials, *IDInfo) (*Result, error)) (*Result, error) {
	if !hasSpares(b) || checkCredentials(label, cred) != nil || ctx.Err() != nil {
		return fresh(ctx, b, cred, id)
	}
	c := s.take(b, addr, label, p)
	if c == nil {
		return fresh(ctx, b, cred, id)
	}
	// From here the login owns c: run closes it on failure, and on
	// success it is Result.Conn, the caller's.
	c.password = cred.Secret
	// The hook covers the spare from now: a spare connected to this
	// proxy itself sits greeted on the other side, which sees the loop
	// when the login arrives there.
	done := connectedHook(ctx, c.raw)
	var res *Result
	err := c.run(ctx, func() (err error) {
		res, err = p.login(c, cred, id)
		return err
	})
	done()
	if err != nil && !c.answered && ctx.Err() == nil && connectionLost(err) {
		// The backend closed the spare before it answered the
		// credentials: nobody is logged in on it. Try once, afresh.
		s.counters().discarded.Add(1)
		return fresh(ctx, b, cred, id)
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

// hasSpares reports whether logins to b may use spares.
func hasSpares(b *routing.Backend) bool {
	return b.Name != "" && b.SpareConnections > 0 && !b.ProxyProtocol
}

// connectionLost reports whether err says the backend closed the
// connection (rather than answered, or took too long).
func connectionLost(err error) bool {
	var bye byeError
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &bye) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func spareMaxIdle(b *routing.Backend) time.Duration {
	if b.SpareMaxIdle > 0 {
		return b.SpareMaxIdle
	}
	return defaultSpareMaxIdle
}

// take returns a live spare of b's service at addr, or nil, and tells the
// refill goroutine (starting it if need be) that a login happened. The
// caller owns the connection returned.
func (s *Spares) take(b *routing.Backend, addr, label string, p protocol) *conn {
	for {
		now := time.Now()
		var got *conn
		var stale []*conn
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil
		}
		if s.pools == nil {
			s.pools = make(map[poolKey]*sparePool)
			s.ctx, s.cancel = context.WithCancel(context.Background())
		}
		k := poolKey{b, addr}
		pl := s.pools[k]
		if pl == nil {
			pl = &sparePool{key: k, label: label, proto: p, wake: make(chan struct{}, 1)}
			s.pools[k] = pl
			s.wg.Add(1)
			go s.refill(s.ctx, pl)
		}
		pl.lastUsed = now
		for got == nil && len(pl.idle) > 0 {
			sp := pl.idle[0]
			pl.idle[0] = spare{}
			pl.idle = pl.idle[1:]
			if now.Sub(sp.since) < spareMaxIdle(b) {
				got = sp.c
			} else {
				stale = append(stale, sp.c)
			}
		}
		s.mu.Unlock()
		select {
		case pl.wake <- struct{}{}:
		default:
		}
		s.discard(stale)
		if got == nil {
			s.counters().missed.Add(1)
			return nil
		}
		if got.idleAlive() {
			s.counters().taken.Add(1)
			return got
		}
		s.discard([]*conn{got})
	}
}

// discard closes spares nobody will use.
func (s *Spares) discard(cs []*conn) {
	for _, c := range cs {
		c.nc.Close()
	}
	s.counters().discarded.Add(uint64(len(cs)))
}

// refill keeps pl's spares: it closes those too old, or all when the
// backend is unusable or has had no login for SpareMaxIdle (it then
// ends), and dials new ones up to SpareConnections.
func (s *Spares) refill(ctx context.Context, pl *sparePool) {
	defer s.wg.Done()
	b := pl.key.b
	maxIdle := spareMaxIdle(b)
	var backoff time.Duration
	var retryAt time.Time
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		usable := s.Usable == nil || s.Usable(b)
		now := time.Now()

		var drop []*conn
		s.mu.Lock()
		unused := now.Sub(pl.lastUsed) >= maxIdle
		keep := pl.idle[:0]
		for _, sp := range pl.idle {
			if s.closed || !usable || unused || now.Sub(sp.since) >= maxIdle {
				drop = append(drop, sp.c)
			} else {
				keep = append(keep, sp)
			}
		}
		clear(pl.idle[len(keep):])
		pl.idle = keep
		if s.closed || unused {
			if s.pools[pl.key] == pl {
				delete(s.pools, pl.key)
			}
			s.mu.Unlock()
			s.discard(drop)
			return
		}
		short := usable && len(pl.idle) < b.SpareConnections
		wait := pl.lastUsed.Add(maxIdle).Sub(now)
		if len(pl.idle) > 0 {
			wait = min(wait, pl.idle[0].since.Add(maxIdle).Sub(now), spareCheck)
		}
		if !usable {
			wait = min(wait, spareCheck)
		}
		if short && now.Before(retryAt) {
			wait = min(wait, retryAt.Sub(now))
			short = false
		}
		s.mu.Unlock()
		s.discard(drop)

		if short {
			c, err := s.dialSpare(ctx, pl)
			if err != nil {
				// Do not hammer a backend that fails: the logins
				// dial as usual meanwhile.
				backoff = min(max(2*backoff, spareBackoffFirst), spareBackoffMax)
				retryAt = time.Now().Add(backoff)
				continue
			}
			backoff = 0
			s.mu.Lock()
			if !s.closed && len(pl.idle) < b.SpareConnections {
				pl.idle = append(pl.idle, spare{c: c, since: time.Now()})
				c = nil // the pool's now
			}
			s.mu.Unlock()
			if c != nil {
				s.discard([]*conn{c})
			}
			continue
		}
		timer.Reset(max(wait, time.Millisecond))
		select {
		case <-ctx.Done():
		case <-pl.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// dialSpare connects to pl's service and prepares the connection for a
// login, under the backend's connect and login timeouts. The caller owns
// the connection.
func (s *Spares) dialSpare(ctx context.Context, pl *sparePool) (*conn, error) {
	c, done, err := connect(ctx, pl.key.b, pl.key.addr, pl.label, nil)
	if err != nil {
		return nil, err
	}
	done()
	if err := c.run(ctx, func() error { return pl.proto.prepare(c) }); err != nil {
		return nil, err
	}
	if c.br.Buffered() > 0 {
		c.nc.Close()
		return nil, c.errorf("spare: unexpected data after the greeting")
	}
	return c, nil
}

// idleAlive reports whether an idle spare is still usable: the backend
// has neither closed it nor sent anything since it was prepared.
func (c *conn) idleAlive() bool {
	return c.br.Buffered() == 0 && peekNothing(c.raw)
}

// Close closes every spare and waits for the refill goroutines to end.
// Logins still running keep their connections.
func (s *Spares) Close() {
	if s == nil {
		return
	}
	var drop []*conn
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		for _, pl := range s.pools {
			for _, sp := range pl.idle {
				drop = append(drop, sp.c)
			}
			pl.idle = nil
		}
		if s.cancel != nil {
			s.cancel()
		}
	}
	s.mu.Unlock()
	s.discard(drop)
	s.wg.Wait()
}
