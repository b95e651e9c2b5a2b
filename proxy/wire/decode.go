package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"

	"github.com/emersion/go-imap/v2"
)

// Default limits, used when the corresponding Decoder field is zero.
const (
	// DefaultMaxLine is Dovecot's IMAP_LOGIN_MAX_LINE_LENGTH and the
	// RFC 7162 §4 recommendation for command lines.
	DefaultMaxLine = 8192
	// DefaultMaxLiteral is enough for any user name or password.
	DefaultMaxLiteral = 1024
	// DefaultMaxLiterals is the LITERAL- limit (RFC 7888).
	DefaultMaxLiterals = 4096
	DefaultMaxDepth    = 8
	// DefaultMaxArgs allows an ID list of 30 field/value pairs (RFC 2971).
	DefaultMaxArgs = 128
)

// MaxTagLen is the longest tag ReadCommand accepts.
const MaxTagLen = 64

// Kind is the syntactic kind of an argument.
type Kind uint8

const (
	KindAtom   Kind = iota + 1 // 1*ASTRING-CHAR, other than NIL
	KindString                 // quoted string or literal
	KindNIL                    // the atom NIL, in any case
	KindList                   // parenthesised list
)

func (k Kind) String() string {
	switch k {
	case KindAtom:
		return "atom"
	case KindString:
		return "string"
	case KindNIL:
		return "NIL"
	case KindList:
		return "list"
	}
	return "invalid"
}

// Arg is one command argument.
type Arg struct {
	Kind Kind
	// Value is the atom text, the string contents, or NIL as the client
	// spelled it (so that an astring "nil" is not lost).
	Value string
	// Literal reports whether a KindString came as a literal rather than
	// a quoted string.
	Literal bool
	// List holds the elements of a KindList; nil for an empty list.
	List []Arg
}

// AString returns the argument as an IMAP astring: the value of an atom,
// a string, or NIL (which is an atom in astring context).
func (a Arg) AString() (string, bool) {
	switch a.Kind {
	case KindAtom, KindString, KindNIL:
		return a.Value, true
	}
	return "", false
}

// Command is one parsed client command.
type Command struct {
	Tag  string
	Name string // upper-cased
	Args []Arg
}

// Error is a protocol error in the client's input. The session answers it
// with a BAD status response, tagged with Tag or untagged ("*") when Tag is
// empty. Text is a fixed string: it never contains client input.
type Error struct {
	Tag  string
	Code imap.ResponseCode // "" or, for sizes over a limit, TOOBIG
	Text string
	// Fatal means the input cannot be resynchronised: the session must
	// reply and close the connection. After a non-fatal Error the reader
	// is positioned at the start of the next command.
	Fatal bool
}

func (e *Error) Error() string {
	s := "wire: " + e.Text
	if e.Code != "" {
		s += " [" + string(e.Code) + "]"
	}
	if e.Fatal {
		s += " (fatal)"
	}
	return s
}

// DefaultAllowLiteral accepts literals for LOGIN and ID, the only
// commands valid before login whose arguments may be literals.
// AUTHENTICATE's initial response is an atom, never a literal.
func DefaultAllowLiteral(name string) bool {
	return name == "LOGIN" || name == "ID"
}

// A Decoder reads commands from a *bufio.Reader owned by the caller.
// Zero limits mean the defaults above.
type Decoder struct {
	MaxLine     int // bytes of one command line, CRLFs included, literal data excluded
	MaxLiteral  int // bytes of one literal
	MaxLiterals int // bytes of all literals of one command
	MaxDepth    int // nesting of parenthesised lists
	MaxArgs     int // arguments of one command, list elements included

	// Continue is called after a synchronizing literal {n} has been
	// accepted and before its data is read; it must send the "+"
	// continuation request and flush. An error from it is returned by
	// ReadCommand as is. If Continue is nil, synchronizing literals are
	// refused (without a continuation request, so the client sends
	// nothing).
	Continue func() error

	// AllowLiteral reports whether the command (its upper-cased name) may
	// carry literals. Nil means DefaultAllowLiteral.
	AllowLiteral func(name string) bool

	br    *bufio.Reader
	stack []Arg // scratch space for arguments, reused across commands
}

// NewDecoder returns a Decoder reading from br.
func NewDecoder(br *bufio.Reader) *Decoder {
	return &Decoder{br: br}
}

// Reset makes d read from br, keeping its limits and callbacks; for a
// session that replaced its reader, e.g. after STARTTLS.
func (d *Decoder) Reset(br *bufio.Reader) {
	d.br = br
}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

func (d *Decoder) maxLine() int     { return orDefault(d.MaxLine, DefaultMaxLine) }
func (d *Decoder) maxLiteral() int  { return orDefault(d.MaxLiteral, DefaultMaxLiteral) }
func (d *Decoder) maxLiterals() int { return orDefault(d.MaxLiterals, DefaultMaxLiterals) }
func (d *Decoder) maxDepth() int    { return orDefault(d.MaxDepth, DefaultMaxDepth) }
func (d *Decoder) maxArgs() int     { return orDefault(d.MaxArgs, DefaultMaxArgs) }

func (d *Decoder) allowLiteral(name string) bool {
	if d.AllowLiteral == nil {
		return DefaultAllowLiteral(name)
	}
	return d.AllowLiteral(name)
}

var errNoReader = errors.New("wire: Decoder has no reader")

// ReadCommand reads and parses one command.
//
// Protocol errors are returned as *Error. Any other error comes from the
// reader (io.EOF before the first byte of a command, io.ErrUnexpectedEOF
// in the middle of one, deadlines, resets) or from Continue, and means the
// connection is unusable.
func (d *Decoder) ReadCommand() (*Command, error) {
	if d.br == nil {
		return nil, errNoReader
	}
	p := parser{d: d}
	defer p.releaseStack()
	if err := p.next(true); err != nil {
		return nil, err
	}
	cmd, err := p.command()
	if err == nil {
		return cmd, nil
	}
	if e, ok := err.(*Error); ok && !e.Fatal {
		if err := p.skipRest(); err != nil {
			return nil, err
		}
	}
	return nil, err
}

// ReadLine reads one line without any literal parsing, for AUTHENTICATE
// continuation responses. The line is returned without its CRLF (or LF)
// and belongs to the caller, who may wipe it. A line longer than max bytes
// (max <= 0 means MaxLine) is a fatal *Error.
func (d *Decoder) ReadLine(max int) ([]byte, error) {
	if d.br == nil {
		return nil, errNoReader
	}
	if max <= 0 {
		max = d.maxLine()
	}
	line, err := d.readLine(max+2, true)
	if err == errTooLong || err == nil && len(trimEOL(line)) > max {
		return nil, &Error{Code: imap.ResponseCodeTooBig, Text: "Line too long", Fatal: true}
	}
	if err != nil {
		return nil, err
	}
	return bytes.Clone(trimEOL(line)), nil
}

var errTooLong = errors.New("line too long")

// readLine reads through the next LF, failing with errTooLong once more
// than limit bytes have been read, so that memory never grows with the
// input. The result may alias the bufio buffer: it is valid until the next
// read.
func (d *Decoder) readLine(limit int, atStart bool) ([]byte, error) {
	var acc []byte
	for {
		chunk, err := d.br.ReadSlice('\n')
		if len(acc)+len(chunk) > limit {
			return nil, errTooLong
		}
		switch err {
		case nil:
			if acc == nil {
				return chunk, nil
			}
			return append(acc, chunk...), nil
		case bufio.ErrBufferFull:
			acc = append(acc, chunk...)
		case io.EOF:
			if atStart && len(acc)+len(chunk) == 0 {
				return nil, io.EOF
			}
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

// trimEOL removes the LF that ends b and a CR before it.
func trimEOL(b []byte) []byte {
	b = b[:len(b)-1]
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	return b
}

// parser holds the state of one ReadCommand call. The command line is
// read in fragments: a fragment ends at an LF, and a literal header can
// only be the last thing in a fragment.
type parser struct {
	d        *Decoder
	s        string // current fragment, without its line terminator
	pos      int
	lineLen  int // command line bytes read so far
	litTotal int // literal bytes read or skipped so far
	tag      string
	name     string
	depth    int
	nargs    int
	// complete means the client sent the whole command: it ended with a
	// synchronizing literal we refused, so it waits for a "+" that will
	// never come.
	complete bool
}

func (p *parser) fail(code imap.ResponseCode, text string) *Error {
	return &Error{Tag: p.tag, Code: code, Text: text}
}

func (p *parser) fatal(code imap.ResponseCode, text string) *Error {
	return &Error{Tag: p.tag, Code: code, Text: text, Fatal: true}
}

// next reads the next fragment of the command line.
func (p *parser) next(atStart bool) error {
	line, err := p.d.readLine(p.d.maxLine()-p.lineLen, atStart)
	if err == errTooLong {
		return p.fatal(imap.ResponseCodeTooBig, "Line too long")
	}
	if err != nil {
		return err
	}
	p.lineLen += len(line)
	// One conversion per fragment: atoms and unescaped quoted strings are
	// substrings of it.
	p.s = string(trimEOL(line))
	p.pos = 0
	return nil
}

func (p *parser) releaseStack() {
	// Keep a small scratch stack for the next command, but not a big one
	// a hostile command grew: idle connections should stay cheap.
	if cap(p.d.stack) > 16 {
		p.d.stack = nil
	}
}

func (p *parser) command() (*Command, error) {
	if len(p.s) == 0 {
		return nil, p.fail("", "Empty command line")
	}
	for p.pos < len(p.s) && tagChar[p.s[p.pos]] {
		p.pos++
	}
	if p.pos == 0 || p.pos > MaxTagLen || p.pos < len(p.s) && p.s[p.pos] != ' ' {
		return nil, p.fail("", "Invalid tag")
	}
	p.tag = p.s[:p.pos]
	if p.pos == len(p.s) {
		return nil, p.fail("", "Missing command")
	}
	p.pos++
	start := p.pos
	for p.pos < len(p.s) && atomChar[p.s[p.pos]] {
		p.pos++
	}
	if p.pos == start || p.pos < len(p.s) && p.s[p.pos] != ' ' {
		return nil, p.fail("", "Invalid command name")
	}
	p.name = upperASCII(p.s[start:p.pos])
	cmd := &Command{Tag: p.tag, Name: p.name}
	if p.pos == len(p.s) {
		return cmd, nil
	}
	p.pos++
	args, err := p.list(false)
	if err != nil {
		return nil, err
	}
	cmd.Args = args
	return cmd, nil
}

// list parses arguments separated by exactly one SP, up to the end of the
// line or, inside a list, the closing parenthesis.
func (p *parser) list(inList bool) ([]Arg, error) {
	if inList && p.pos < len(p.s) && p.s[p.pos] == ')' {
		p.pos++
		return nil, nil
	}
	d := p.d
	base := len(d.stack)
	truncate := func() {
		clear(d.stack[base:]) // do not keep passwords in the scratch stack
		d.stack = d.stack[:base]
	}
	for {
		a, err := p.arg()
		if err != nil {
			truncate()
			return nil, err
		}
		d.stack = append(d.stack, a)
		if p.pos == len(p.s) {
			if inList {
				truncate()
				return nil, p.fail("", "Unterminated list")
			}
			break
		}
		c := p.s[p.pos]
		p.pos++
		if c == ')' && inList {
			break
		}
		if c != ' ' {
			truncate()
			return nil, p.fail("", "Syntax error")
		}
	}
	args := make([]Arg, len(d.stack)-base)
	copy(args, d.stack[base:])
	truncate()
	return args, nil
}

func (p *parser) arg() (Arg, error) {
	p.nargs++
	if p.nargs > p.d.maxArgs() {
		return Arg{}, p.fail("", "Too many arguments")
	}
	if p.pos == len(p.s) {
		return Arg{}, p.fail("", "Missing argument")
	}
	switch p.s[p.pos] {
	case '(':
		if p.depth >= p.d.maxDepth() {
			return Arg{}, p.fail("", "Lists nested too deeply")
		}
		p.depth++
		p.pos++
		l, err := p.list(true)
		p.depth--
		return Arg{Kind: KindList, List: l}, err
	case '"':
		return p.quoted()
	case '{':
		return p.literal()
	}
	start := p.pos
	for p.pos < len(p.s) && astringChar[p.s[p.pos]] {
		p.pos++
	}
	if p.pos == start {
		return Arg{}, p.fail("", "Syntax error")
	}
	v := p.s[start:p.pos]
	if len(v) == 3 && upperASCII(v) == "NIL" {
		return Arg{Kind: KindNIL, Value: v}, nil
	}
	return Arg{Kind: KindAtom, Value: v}, nil
}

// quoted parses a quoted string. Only \" and \\ are escapes; 8-bit bytes
// are kept as they are (UTF-8 passwords), CR and NUL are refused.
func (p *parser) quoted() (Arg, error) {
	start := p.pos + 1
	escaped := false
	i := start
	for ; ; i++ {
		if i == len(p.s) {
			return Arg{}, p.fail("", "Unterminated quoted string")
		}
		c := p.s[i]
		if c == '"' {
			break
		}
		switch c {
		case '\r', 0:
			return Arg{}, p.fail("", "Invalid character in quoted string")
		case '\\':
			i++
			if i == len(p.s) || p.s[i] != '"' && p.s[i] != '\\' {
				return Arg{}, p.fail("", "Invalid escape in quoted string")
			}
			escaped = true
		}
	}
	raw := p.s[start:i]
	p.pos = i + 1
	if !escaped {
		return Arg{Kind: KindString, Value: raw}, nil
	}
	b := make([]byte, 0, len(raw))
	for j := 0; j < len(raw); j++ {
		if raw[j] == '\\' {
			j++
		}
		b = append(b, raw[j])
	}
	return Arg{Kind: KindString, Value: string(b)}, nil
}

// hugeLiteral stands for any literal size that does not fit the parser's
// arithmetic; every limit is far below it.
const hugeLiteral = 1 << 30

// parseLiteralHeader parses "{" 1*DIGIT ["+"] "}" at the start of s and
// returns the size (hugeLiteral when it overflows) and the bytes used.
func parseLiteralHeader(s string) (n int, nonSync bool, used int, ok bool) {
	i := 1
	for ; i < len(s) && '0' <= s[i] && s[i] <= '9'; i++ {
		if n <= (hugeLiteral-9)/10 { // no overflow, even with a 32-bit int
			n = n*10 + int(s[i]-'0')
		} else {
			n = hugeLiteral
		}
	}
	if i == 1 {
		return 0, false, 0, false
	}
	if i < len(s) && s[i] == '+' {
		nonSync = true
		i++
	}
	if i == len(s) || s[i] != '}' {
		return 0, false, 0, false
	}
	return n, nonSync, i + 1, true
}

func (p *parser) literal() (Arg, error) {
	n, nonSync, used, ok := parseLiteralHeader(p.s[p.pos:])
	if !ok {
		return Arg{}, p.fail("", "Invalid literal")
	}
	p.pos += used
	if p.pos != len(p.s) {
		return Arg{}, p.fail("", "Literal must end the line")
	}
	d := p.d
	allowed := d.allowLiteral(p.name)
	if !nonSync && !allowed {
		p.complete = true
		return Arg{}, p.fail("", "Literal not allowed here")
	}
	if n > d.maxLiteral() || p.litTotal+n > d.maxLiterals() {
		if nonSync {
			// The data is already on the wire and too big to skip:
			// treating it as commands would allow injection.
			return Arg{}, p.fatal(imap.ResponseCodeTooBig, "Literal too large")
		}
		p.complete = true
		return Arg{}, p.fail(imap.ResponseCodeTooBig, "Literal too large")
	}
	if !allowed {
		return Arg{}, p.fail("", "Literal not allowed here") // skipRest discards the data
	}
	if !nonSync {
		if d.Continue == nil {
			p.complete = true
			return Arg{}, p.fail("", "Synchronizing literals not supported")
		}
		if err := d.Continue(); err != nil {
			return Arg{}, err
		}
	}
	buf := make([]byte, n)
	defer clear(buf)
	if _, err := io.ReadFull(d.br, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Arg{}, err
	}
	p.litTotal += n
	// Read the rest of the line before judging the data, so that an
	// error leaves the reader at a known place.
	if err := p.next(false); err != nil {
		return Arg{}, err
	}
	if bytes.IndexByte(buf, 0) >= 0 {
		return Arg{}, p.fail("", "Invalid character in literal")
	}
	if len(p.s) > 0 && p.s[0] != ' ' && p.s[0] != ')' {
		return Arg{}, p.fail("", "Literal must be followed by a space or the end of the line")
	}
	return Arg{Kind: KindString, Value: string(buf), Literal: true}, nil
}

// skipRest discards what is left of a bad command so that the next read
// starts at the next command. Non-synchronizing literals that end a
// fragment are skipped if they are small; a synchronizing one ends the
// command, since the client waits for a continuation request.
func (p *parser) skipRest() error {
	if p.complete {
		return nil
	}
	for {
		n, nonSync, ok := trailingLiteral(p.s)
		if !ok || !nonSync {
			return nil
		}
		if n > p.d.maxLiteral() || p.litTotal+n > p.d.maxLiterals() {
			return p.fatal(imap.ResponseCodeTooBig, "Literal too large")
		}
		if _, err := p.d.br.Discard(n); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		p.litTotal += n
		if err := p.next(false); err != nil {
			return err
		}
	}
}

// trailingLiteral reports whether s ends with a literal header.
func trailingLiteral(s string) (n int, nonSync bool, ok bool) {
	if len(s) < 3 || s[len(s)-1] != '}' {
		return 0, false, false
	}
	i := len(s) - 2
	if s[i] == '+' {
		i--
	}
	for i >= 0 && '0' <= s[i] && s[i] <= '9' {
		i--
	}
	if i < 0 || s[i] != '{' {
		return 0, false, false
	}
	n, nonSync, _, ok = parseLiteralHeader(s[i:])
	return n, nonSync, ok
}

func upperASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if 'a' <= s[i] && s[i] <= 'z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'a' <= b[j] && b[j] <= 'z' {
					b[j] -= 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// Character classes of RFC 3501 §9.
var atomChar, astringChar, tagChar [256]bool

func init() {
	for c := 0x21; c < 0x7f; c++ {
		atomChar[c] = true
	}
	for _, c := range []byte(`(){%*"\]`) { // atom-specials other than SP and CTL
		atomChar[c] = false
	}
	astringChar = atomChar
	astringChar[']'] = true // resp-specials are allowed in astrings
	tagChar = astringChar
	tagChar['+'] = false
}
