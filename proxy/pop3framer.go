package proxy

import (
	"bytes"
	"sync"
)

// A pop3Framer follows both directions of a spliced POP3 session, so that
// a kick closes it between two responses, never inside a multi-line one
// (a RETR cut in the middle would leave the client with half a message it
// may take for a whole one).
//
// Unlike IMAP, a POP3 response does not say whether it is multi-line: a
// "+OK" is followed by a dot-terminated body or not depending on the
// command it answers (RFC 1939: RETR, TOP, and LIST and UIDL without an
// argument; RFC 2449: CAPA). So the client's commands are followed too:
// each complete command line queues one bit, "a +OK to this opens a body",
// which the backend's next status line takes. Commands are queued before
// they are written to the backend, so the bit is always there before the
// answer. Clients may pipeline (RFC 2449 PIPELINING); 64 unanswered
// commands are tracked, and the commands past them count as single-line.
//
// As with the IMAP framer, a stream that does not follow the protocol can
// lead it astray, and a kick waits for a boundary no longer than its
// timeout.
type pop3Framer struct {
	mu      sync.Mutex // guards queue and queued: both directions use them
	queue   uint64     // bit i: the i-th unanswered command expects a body on +OK
	queued  uint8
	cmdHead [pop3CmdHead]byte // the start of the client's current command line
	ncmd    uint8             // owned by the client->backend direction
	cmdIn   bool

	// backend->client, under the splicer's downMu.
	inLine bool
	body   bool    // inside a multi-line body
	head   [4]byte // the first bytes of the current line
	nhead  uint8
	lineN  int // bytes of the current line so far, capped
}

// pop3CmdHead holds "UIDL", a space and an argument's first bytes.
const pop3CmdHead = 16

// atBoundary reports whether everything fed so far ends between two
// responses.
func (f *pop3Framer) atBoundary() bool { return !f.inLine && !f.body }

// advance follows p, the backend's bytes, and returns how many it
// consumed: all of them, unless stop is set and a boundary is reached
// first, where it stops (possibly at 0).
func (f *pop3Framer) advance(p []byte, stop bool) int {
	i := 0
	for i < len(p) {
		if stop && f.atBoundary() {
			return i
		}
		rest := p[i:]
		j := bytes.IndexByte(rest, '\n')
		if j < 0 {
			f.partial(rest)
			return len(p)
		}
		f.partial(rest[:j])
		f.endLine()
		i += j + 1
	}
	return i
}

// partial records seg, a part of the current line without its LF.
func (f *pop3Framer) partial(seg []byte) {
	if int(f.nhead) < len(f.head) {
		f.nhead += uint8(copy(f.head[f.nhead:], seg))
	}
	f.lineN = min(f.lineN+len(seg), 1<<20)
	f.inLine = true
}

// endLine ends the current line of the backend's stream.
func (f *pop3Framer) endLine() {
	line := f.head[:f.nhead]
	n := f.lineN
	if n > 0 && n <= len(f.head) && line[n-1] == '\r' {
		line, n = line[:n-1], n-1
	} else if n > len(f.head) {
		n-- // a CR or not, the line is longer than a terminator
	}
	switch {
	case f.body:
		// The terminator is a line of one dot; a body line that starts
		// with a dot has it doubled (byte-stuffing), so is longer.
		if n == 1 && line[0] == '.' {
			f.body = false
		}
	case bytes.HasPrefix(line, []byte("+OK")):
		f.body = f.pop()
	case bytes.HasPrefix(line, []byte("-ERR")):
		f.pop()
	}
	// Anything else outside a body (a SASL "+ " continuation, garbage) is
	// taken for a single line that answers nothing.
	f.inLine, f.nhead, f.lineN = false, 0, 0
}

// pop takes the oldest unanswered command's bit.
func (f *pop3Framer) pop() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.queued == 0 {
		return false // unsolicited (Dovecot's "-ERR Disconnected ...")
	}
	multi := f.queue&1 != 0
	f.queue >>= 1
	f.queued--
	return multi
}

// feedCommands follows p, the client's bytes, queueing one bit per
// complete command line.
func (f *pop3Framer) feedCommands(p []byte) {
	for len(p) > 0 {
		j := bytes.IndexByte(p, '\n')
		seg := p
		if j >= 0 {
			seg = p[:j]
		}
		if int(f.ncmd) < len(f.cmdHead) {
			f.ncmd += uint8(copy(f.cmdHead[f.ncmd:], seg))
		}
		if j < 0 {
			return
		}
		f.push(multiLineCommand(f.cmdHead[:f.ncmd]))
		f.ncmd = 0
		p = p[j+1:]
	}
}

func (f *pop3Framer) push(multi bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.queued == 64 {
		return
	}
	if multi {
		f.queue |= 1 << f.queued
	}
	f.queued++
}

// multiLineCommand reports whether a +OK to the command line that starts
// with head is followed by a body.
func multiLineCommand(head []byte) bool {
	head = bytes.TrimRight(head, "\r")
	verb, arg, _ := bytes.Cut(head, []byte(" "))
	hasArg := len(bytes.TrimSpace(arg)) > 0
	switch {
	case asciiEqualFold(verb, "RETR"), asciiEqualFold(verb, "TOP"), asciiEqualFold(verb, "CAPA"):
		return true
	case asciiEqualFold(verb, "LIST"), asciiEqualFold(verb, "UIDL"):
		return !hasArg
	}
	return false
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		if b[i]&^0x20 != s[i] {
			return false
		}
	}
	return true
}

// pop3Bye turns the BYE line of a kick (byeLine) into POP3's.
func pop3Bye(bye []byte) []byte {
	reason := bytes.TrimSuffix(bytes.TrimPrefix(bye, []byte("* BYE [UNAVAILABLE] ")), []byte("\r\n"))
	return append(append([]byte("-ERR [SYS/TEMP] "), reason...), "\r\n"...)
}
