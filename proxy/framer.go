package proxy

import "bytes"

// A framer follows the line and literal structure of one direction of a
// spliced IMAP stream without parsing it, so that Portico knows when it may
// insert a response of its own (a BYE) between two of the backend's
// responses, and can notice a client's COMPRESS command.
//
// IMAP frames everything the same way in both directions: lines ending in
// LF (CRLF on the wire; a bare LF is accepted), and literals announced by
// "{n}", "{n+}" or "~{n}" as the very last thing on a line, whose n bytes
// follow the line and are themselves followed by the rest of the command
// or response. So a response boundary is the start of a line that is not
// the continuation of a line after a literal. A marker is recognised only
// at the end of a line: `"{5}"` inside a quoted string mid-line is text.
//
// The framer costs little per chunk: bytes.IndexByte jumps from line end to
// line end, literals are skipped by arithmetic, and only a small fixed tail
// of the current line is kept across chunks (enough for the longest
// marker), so there is no allocation. A stream that does not follow the
// grammar (a status text that happens to end in "{5}", say) can lead the
// framer astray; callers that wait for a boundary must therefore bound the
// wait.
//
// A line ending in "}" after more than 18 digits counts as an endless
// literal, whether a "{" precedes them or not.
//
// The zero value is at a boundary, and frames without capturing commands.
type framer struct {
	lit    int64 // literal bytes still to come
	inLine bool  // part of the current line has been seen
	cont   bool  // the current line continues a command or response after a literal

	ntail uint8
	tail  [frameTail]byte // the last bytes of the current line, for the marker

	// Commands: with heads set, the first bytes of each command line are
	// kept to recognise "tag COMPRESS".
	heads    bool
	nhead    uint8
	head     [frameHead]byte
	compress bool // a COMPRESS command was seen
}

const (
	// frameTail holds the longest marker the framer recognises: "{", 19
	// digits, "+", "}" and a CR.
	frameTail = 24
	// frameHead holds a tag of up to 30 bytes, a space and "COMPRESS".
	frameHead = 40
	// maxLitDigits keeps the literal size within an int64.
	maxLitDigits = 18
)

// atBoundary reports whether everything fed so far ends exactly at a
// response (or command) boundary.
func (f *framer) atBoundary() bool {
	return f.lit == 0 && !f.inLine && !f.cont
}

// feed follows p, which comes right after what was fed before.
func (f *framer) feed(p []byte) {
	f.advance(p, false)
}

// advance follows p and returns how many bytes of it it consumed: all of
// them, unless stop is set and a boundary is reached first, in which case
// it stops there (possibly at 0).
func (f *framer) advance(p []byte, stop bool) int {
	i := 0
	for i < len(p) {
		if f.lit > 0 {
			k := int64(len(p) - i)
			if f.lit < k {
				k = f.lit
			}
			f.lit -= k
			i += int(k)
			continue
		}
		if stop && !f.inLine && !f.cont {
			return i
		}
		rest := p[i:]
		j := bytes.IndexByte(rest, '\n')
		if j < 0 {
			f.partial(rest)
			return len(p)
		}
		if j >= 2 && rest[j-1] != '}' && (rest[j-1] != '\r' || rest[j-2] != '}') {
			// The common line: no marker, decided without the tail.
			if f.heads && !f.cont {
				f.checkHead(rest[:j])
			}
			f.inLine, f.cont, f.ntail = false, false, 0
		} else {
			f.endLine(rest[:j])
		}
		i += j + 1
	}
	return i
}

// checkHead looks for COMPRESS in the command line that ends with last.
// A line that began in this chunk is checked in place; one that began in
// an earlier chunk through the head kept from there.
func (f *framer) checkHead(last []byte) {
	if !f.inLine {
		if isCompress(last[:min(len(last), frameHead)]) {
			f.compress = true
		}
		return
	}
	if int(f.nhead) < len(f.head) {
		f.nhead += uint8(copy(f.head[f.nhead:], last))
	}
	if isCompress(f.head[:f.nhead]) {
		f.compress = true
	}
	f.nhead = 0
}

// partial records seg, a part of the current line without its end.
func (f *framer) partial(seg []byte) {
	if f.heads && !f.cont && int(f.nhead) < len(f.head) {
		f.nhead += uint8(copy(f.head[f.nhead:], seg))
	}
	f.inLine = true
	if len(seg) >= frameTail {
		copy(f.tail[:], seg[len(seg)-frameTail:])
		f.ntail = frameTail
		return
	}
	keep := min(int(f.ntail), frameTail-len(seg))
	copy(f.tail[:keep], f.tail[int(f.ntail)-keep:f.ntail])
	copy(f.tail[keep:], seg)
	f.ntail = uint8(keep + len(seg))
}

// endLine ends the current line; last is its part in the current chunk,
// without the LF.
func (f *framer) endLine(last []byte) {
	if f.heads && !f.cont {
		f.checkHead(last)
	}
	end := last
	if len(last) < frameTail && f.ntail > 0 {
		// The marker may straddle a chunk boundary: join the kept tail and
		// this part in a stack buffer.
		var buf [2 * frameTail]byte
		n := copy(buf[:], f.tail[:f.ntail])
		n += copy(buf[n:], last)
		end = buf[:n]
	}
	// The same window whatever the chunking.
	if len(end) > frameTail {
		end = end[len(end)-frameTail:]
	}
	f.lit, f.cont = literalAtEnd(end)
	f.inLine = false
	f.ntail = 0
	f.nhead = 0
}

// literalAtEnd parses a literal marker at the end of a line (LF already
// removed): "{n}", "{n+}" or "~{n}", then an optional CR.
func literalAtEnd(line []byte) (n int64, ok bool) {
	if k := len(line); k > 0 && line[k-1] == '\r' {
		line = line[:k-1]
	}
	k := len(line)
	if k < 3 || line[k-1] != '}' {
		return 0, false
	}
	k--
	if line[k-1] == '+' {
		k--
	}
	end := k
	for k > 0 && line[k-1] >= '0' && line[k-1] <= '9' {
		k--
	}
	if end-k > maxLitDigits {
		// Larger than any real literal, and perhaps longer than the window
		// the framer keeps, so the "{" may be out of sight: treat it as
		// endless rather than risk writing into what may be data.
		return 1<<63 - 1, true
	}
	if k == 0 || k == end || line[k-1] != '{' {
		return 0, false
	}
	digits := line[k:end]
	for _, d := range digits {
		n = n*10 + int64(d-'0')
	}
	return n, true
}

// isCompress reports whether a command line starts with "tag COMPRESS"
// (RFC 4978), in any case.
func isCompress(head []byte) bool {
	sp := bytes.IndexByte(head, ' ')
	if sp <= 0 {
		return false
	}
	rest := head[sp+1:]
	const cmd = "COMPRESS"
	if len(rest) < len(cmd) {
		return false
	}
	for i := 0; i < len(cmd); i++ {
		if rest[i]&^0x20 != cmd[i] {
			return false
		}
	}
	rest = rest[len(cmd):]
	return len(rest) == 0 || rest[0] == ' ' || rest[0] == '\r'
}
