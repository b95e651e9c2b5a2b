package proxy

import (
	"errors"
	"time"
)

// Kicks end a spliced session cleanly: the client receives
// `* BYE [UNAVAILABLE] reason` between two of the backend's responses,
// never inside one (and never inside a literal), and then both connections
// close. Both directions of a splice are followed by a framer:
//
//   - backend->client, to know where the responses end. Every write to the
//     client of that direction happens under downMu, so that the framer
//     always describes what the client has received. A kick that finds the
//     stream at a boundary writes the BYE itself; otherwise it leaves it to
//     the copy loop, which writes its next chunk only up to the first
//     boundary, then the BYE, and drops the rest.
//   - client->backend, to notice COMPRESS. Once a client has sent it the
//     session counts as compressed, whether the backend accepted it or not
//     (its answer is not parsed), and a kick just closes the connections:
//     a BYE in clear text in a deflate stream would be garbage.
//
// A kick is bounded: if no boundary comes (a slow client in the middle of a
// large FETCH, or a stream the framer lost track of), the connections are
// closed after the kick timeout anyway.

// For a POP3 session, a pop3Framer takes the place of both framers, and
// the BYE becomes `-ERR [SYS/TEMP] reason`: POP3 has no untagged response,
// but a line at a boundary is read as the answer to the client's next
// command, or after a command it has sent, as that command's answer, and
// the connection closes after it, as Dovecot does on its own shutdown.

// errKicked ends the backend->client copy once the BYE is out.
var errKicked = errors.New("proxy: session kicked")

// byeWriteTimeout bounds the write of the BYE line itself.
const byeWriteTimeout = 2 * time.Second

// writeBackend passes a chunk from the client on to the backend, looking
// for a COMPRESS command first: the flag must be up before the backend can
// answer it.
func (p *splicer) writeBackend(b []byte) (int, error) {
	p.feedUp(b)
	return p.backend.Write(b)
}

// feedUp follows a chunk the client sends to the backend. It runs before
// the chunk is written: a POP3 command is queued before the backend can
// answer it, and a COMPRESS is seen before the backend's OK.
func (p *splicer) feedUp(b []byte) {
	switch {
	case p.pop != nil:
		p.pop.feedCommands(b)
	case !p.compressed.Load():
		p.up.feed(b)
		if p.up.compress {
			p.compressed.Store(true)
		}
	}
}

// feedDown follows a chunk the backend sends to the client; downMu is held
// (or the session is not spliced yet).
func (p *splicer) feedDown(b []byte) {
	switch {
	case p.pop != nil:
		p.pop.advance(b, false)
	case !p.compressed.Load():
		p.down.feed(b)
	}
}

// advanceDown is feedDown up to the first response boundary (see
// framer.advance).
func (p *splicer) advanceDown(b []byte) int {
	if p.pop != nil {
		return p.pop.advance(b, true)
	}
	return p.down.advance(b, true)
}

// downAtBoundary reports whether the client has received whole responses.
func (p *splicer) downAtBoundary() bool {
	if p.pop != nil {
		return p.pop.atBoundary()
	}
	return p.down.atBoundary()
}

// writeClient passes a chunk from the backend on to the client.
func (p *splicer) writeClient(b []byte) (int, error) {
	p.downMu.Lock()
	if p.kickMsg.Load() != nil {
		n, err := p.writeClientKicked(b)
		p.downMu.Unlock()
		return n, err
	}
	p.feedDown(b)
	n, err := writeTLS(p.client, p.batch, b)
	p.downMu.Unlock()
	// A kick that arrived while the lock was held left the BYE to us.
	if err == nil && p.kickMsg.Load() != nil {
		p.downMu.Lock()
		ended := p.byeLocked()
		p.downMu.Unlock()
		if ended {
			return n, errKicked
		}
	}
	return n, err
}

// writeClientKicked writes b up to the first response boundary, then the
// BYE. downMu is held.
func (p *splicer) writeClientKicked(b []byte) (int, error) {
	if p.kickEnded || p.compressed.Load() {
		p.byeLocked()
		return 0, errKicked
	}
	k := p.advanceDown(b)
	var n int
	if k > 0 {
		var err error
		if n, err = p.client.Write(b[:k]); err != nil {
			return n, err
		}
	}
	if p.byeLocked() {
		return n, errKicked
	}
	return n, nil
}

// byeLocked ends a kicked session if it can: at once when compressed, with
// the BYE when the client's stream is at a boundary. It reports whether the
// session is ended. downMu is held.
func (p *splicer) byeLocked() bool {
	if p.kickEnded {
		return true
	}
	if !p.compressed.Load() {
		if !p.downAtBoundary() {
			return false
		}
		p.client.SetWriteDeadline(time.Now().Add(byeWriteTimeout))
		p.client.Write(*p.kickMsg.Load())
	}
	p.kickEnded = true
	p.closeBoth()
	return true
}

// kick asks the session to end with bye, a complete response line, within
// timeout. It does not block: when the backend->client direction is busy
// writing, that direction sends the BYE. Later kicks of the same session
// are ignored.
func (p *splicer) kick(bye []byte, timeout time.Duration) {
	if p.pop != nil {
		bye = pop3Bye(bye)
	}
	if !p.kickMsg.CompareAndSwap(nil, &bye) {
		return
	}
	p.kickTimer.Store(time.AfterFunc(timeout, p.closeBoth))
	if p.compressed.Load() {
		p.closeBoth()
		return
	}
	// If the lock is taken, its holder sees kickMsg after its write.
	if p.downMu.TryLock() {
		p.byeLocked()
		p.downMu.Unlock()
	}
}

// kicked reports whether the session has been asked to end.
func (p *splicer) kicked() bool {
	return p.kickMsg.Load() != nil
}
