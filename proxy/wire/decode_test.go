package wire

import (
	"bufio"
	"errors"
	"io"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// newTestDecoder returns a decoder on input whose Continue counts calls.
func newTestDecoder(input string) (*Decoder, *int) {
	d := NewDecoder(bufio.NewReader(strings.NewReader(input)))
	conts := new(int)
	d.Continue = func() error { *conts++; return nil }
	return d, conts
}

func atom(v string) Arg { return Arg{Kind: KindAtom, Value: v} }
func str(v string) Arg  { return Arg{Kind: KindString, Value: v} }
func lit(v string) Arg  { return Arg{Kind: KindString, Value: v, Literal: true} }
func nilArg(v string) Arg {
	return Arg{Kind: KindNIL, Value: v}
}
func list(a ...Arg) Arg { return Arg{Kind: KindList, List: a} }

func TestReadCommand(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		want  Command
		conts int
	}{
		{"bare", "a1 CAPABILITY\r\n", Command{Tag: "a1", Name: "CAPABILITY"}, 0},
		{"lowercase", "a1 capability\r\n", Command{Tag: "a1", Name: "CAPABILITY"}, 0},
		{"bare LF", "a1 NOOP\n", Command{Tag: "a1", Name: "NOOP"}, 0},
		{"tag with ]", "a]1 NOOP\r\n", Command{Tag: "a]1", Name: "NOOP"}, 0},
		{"long tag", strings.Repeat("t", 64) + " NOOP\r\n", Command{Tag: strings.Repeat("t", 64), Name: "NOOP"}, 0},
		{"login atoms", "a2 LOGIN alice secret\r\n",
			Command{"a2", "LOGIN", []Arg{atom("alice"), atom("secret")}}, 0},
		{"atom with ]", "a2 LOGIN a]b c\r\n",
			Command{"a2", "LOGIN", []Arg{atom("a]b"), atom("c")}}, 0},
		{"login quoted", `a3 LOGIN "alice@example.test" "secret pass"` + "\r\n",
			Command{"a3", "LOGIN", []Arg{str("alice@example.test"), str("secret pass")}}, 0},
		{"escapes", `a3 LOGIN "a\"b" "c\\d\\"` + "\r\n",
			Command{"a3", "LOGIN", []Arg{str(`a"b`), str(`c\d\`)}}, 0},
		{"empty quoted", `a3 LOGIN "" ""` + "\r\n",
			Command{"a3", "LOGIN", []Arg{str(""), str("")}}, 0},
		{"8-bit quoted", "a4 LOGIN \"jörg\" \"pässwört\xff\"\r\n",
			Command{"a4", "LOGIN", []Arg{str("jörg"), str("pässwört\xff")}}, 0},
		{"tab and braces in quoted", "a4 LOGIN \"a\tb\" \"{5}\"\r\n",
			Command{"a4", "LOGIN", []Arg{str("a\tb"), str("{5}")}}, 0},
		{"sync literals", "a5 LOGIN {5}\r\nalice {11}\r\nsecret pass\r\n",
			Command{"a5", "LOGIN", []Arg{lit("alice"), lit("secret pass")}}, 2},
		{"non-sync literals", "a6 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n",
			Command{"a6", "LOGIN", []Arg{lit("alice"), lit("secret")}}, 0},
		{"literal with CRLF and 8-bit", "a6 LOGIN alice {12+}\r\np\r\nb LOGOUT\xe9\r\n",
			Command{"a6", "LOGIN", []Arg{atom("alice"), lit("p\r\nb LOGOUT\xe9")}}, 0},
		{"empty literals", "a6 LOGIN {0}\r\n {0+}\r\n\r\n",
			Command{"a6", "LOGIN", []Arg{lit(""), lit("")}}, 1},
		{"id nil", "a7 ID NIL\r\n", Command{"a7", "ID", []Arg{nilArg("NIL")}}, 0},
		{"id nil lowercase", "a7 id nil\r\n", Command{"a7", "ID", []Arg{nilArg("nil")}}, 0},
		{"id list", `a8 ID ("name" "Thunderbird" "version" NIL)` + "\r\n",
			Command{"a8", "ID", []Arg{list(str("name"), str("Thunderbird"), str("version"), nilArg("NIL"))}}, 0},
		{"id empty list", "a8 ID ()\r\n", Command{"a8", "ID", []Arg{{Kind: KindList}}}, 0},
		{"nested", `a8 ID (("a") "b" ())` + "\r\n",
			Command{"a8", "ID", []Arg{list(list(str("a")), str("b"), Arg{Kind: KindList})}}, 0},
		{"literal in list then )", "a9 ID (\"k\" {3}\r\nabc)\r\n",
			Command{"a9", "ID", []Arg{list(str("k"), lit("abc"))}}, 1},
		{"sasl-ir", "a9 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
			Command{"a9", "AUTHENTICATE", []Arg{atom("PLAIN"), atom("AGFsaWNlAHNlY3JldA==")}}, 0},
		{"sasl-ir empty", "a9 AUTHENTICATE PLAIN =\r\n",
			Command{"a9", "AUTHENTICATE", []Arg{atom("PLAIN"), atom("=")}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, conts := newTestDecoder(tt.in)
			cmd, err := d.ReadCommand()
			if err != nil {
				t.Fatalf("ReadCommand: %v", err)
			}
			if !reflect.DeepEqual(*cmd, tt.want) {
				t.Errorf("got  %+v\nwant %+v", *cmd, tt.want)
			}
			if *conts != tt.conts {
				t.Errorf("Continue called %d times, want %d", *conts, tt.conts)
			}
			if _, err := d.ReadCommand(); err != io.EOF {
				t.Errorf("after the command: %v, want io.EOF", err)
			}
		})
	}
}

func TestArgAString(t *testing.T) {
	for _, a := range []Arg{atom("x"), str("x"), lit("x"), nilArg("x")} {
		if v, ok := a.AString(); !ok || v != "x" {
			t.Errorf("%v.AString() = %q, %v", a.Kind, v, ok)
		}
	}
	if _, ok := list().AString(); ok {
		t.Error("list is an astring")
	}
}

// TestReadCommandErrors checks every protocol error: its tag, code and
// fatality, that its text does not echo the input, and that after a
// non-fatal error the next command is read correctly.
func TestReadCommandErrors(t *testing.T) {
	big := strings.Repeat("x", 5000)
	tests := []struct {
		name  string
		in    string
		tag   string
		code  imap.ResponseCode
		fatal bool
	}{
		// Tags (§4 case 10).
		{"empty line", "\r\n", "", "", false},
		{"empty tag", " NOOP\r\n", "", "", false},
		{"star tag", "* NOOP\r\n", "", "", false},
		{"plus tag", "+ NOOP\r\n", "", "", false},
		{"plus inside tag", "a+b NOOP\r\n", "", "", false},
		{"literal tag", "{5} NOOP\r\n", "", "", false},
		{"quoted tag", "\"x\" NOOP\r\n", "", "", false},
		{"over-long tag", strings.Repeat("t", 1000) + " NOOP\r\n", "", "", false},
		{"tag 65", strings.Repeat("t", 65) + " NOOP\r\n", "", "", false},
		{"control in tag", "a\x01b NOOP\r\n", "", "", false},
		{"NUL in tag", "a\x00 NOOP\r\n", "", "", false},
		{"8-bit tag", "\xc3\xa9 NOOP\r\n", "", "", false},
		{"tag only", "a\r\n", "a", "", false},
		{"tag SP only", "a \r\n", "a", "", false},
		{"bad name", "a NO%OP\r\n", "a", "", false},
		{"CR in line", "a NO\rOP\r\n", "a", "", false},

		// Spacing and atoms.
		{"trailing SP", "a NOOP \r\n", "a", "", false},
		{"double SP", "a LOGIN  alice bob\r\n", "a", "", false},
		{"wildcard in atom", "a LOGIN al%ce bob\r\n", "a", "", false},
		{"8-bit atom", "a LOGIN j\xc3\xb6rg bob\r\n", "a", "", false},

		// Quoted strings (§4 case 8).
		{"NUL in quoted", "a LOGIN \"us\x00er\" \"pw\"\r\n", "a", "", false},
		{"CR in quoted", "a LOGIN \"us\rer\" \"pw\"\r\n", "a", "", false},
		{"bad escape", `a LOGIN "a\qb" pw` + "\r\n", "a", "", false},
		{"unterminated quoted", `a LOGIN "abc` + "\r\n", "a", "", false},
		{"escape at end", `a LOGIN "abc\` + "\r\n", "a", "", false},
		{"no SP after quoted", `a LOGIN "a""b"` + "\r\n", "a", "", false},

		// Lists and nesting (§4 case 7).
		{"unterminated list", "a ID (\"a\"\r\n", "a", "", false},
		{"extra )", "a ID (\"a\"))\r\n", "a", "", false},
		{") outside list", "a ID \"a\")\r\n", "a", "", false},
		{"SP after (", "a ID ( \"a\")\r\n", "a", "", false},
		{"SP before )", "a ID (\"a\" )\r\n", "a", "", false},
		{"depth 9", "a ID " + strings.Repeat("(", 9) + strings.Repeat(")", 9) + "\r\n", "a", "", false},
		{"too many args", "a ID (" + strings.Repeat("NIL ", 200) + "NIL)\r\n", "a", "", false},

		// Literal headers (§4 cases 2, 3, 4, 6).
		{"huge sync literal", "a LOGIN {4294967296}\r\n", "a", imap.ResponseCodeTooBig, false},
		{"overflowing sync literal", "a LOGIN {99999999999999999999}\r\n", "a", imap.ResponseCodeTooBig, false},
		{"sync literal over line budget", "a LOGIN {9000}\r\n", "a", imap.ResponseCodeTooBig, false},
		{"sync literal over MaxLiteral", "a LOGIN {1025}\r\n", "a", imap.ResponseCodeTooBig, false},
		{"overflowing non-sync literal", "a LOGIN {99999999999999999999+}\r\n", "a", imap.ResponseCodeTooBig, true},
		{"LITERAL- violation", "a LOGIN {5000+}\r\n" + "\r\nb LOGOUT\r\n" + big[:4988], "a", imap.ResponseCodeTooBig, true},
		{"bad literal terminator", "a LOGIN {4}\r\nuserXpass\r\n", "a", "", false},
		{"literal not at end of line", "a LOGIN {4}x\r\n", "a", "", false},
		{"literal without digits", "a LOGIN {}\r\n", "a", "", false},
		{"literal with sign", "a LOGIN {-1}\r\n", "a", "", false},
		{"literal unterminated header", "a LOGIN {12\r\n", "a", "", false},
		{"NUL in literal", "a LOGIN {5}\r\nal\x00ce pw\r\n", "a", "", false},
		{"NUL in non-sync literal", "a LOGIN {5+}\r\nal\x00ce pw\r\n", "a", "", false},
		{"literal budget", "a ID (" + strings.Repeat("{1000+}\r\n"+big[:1000]+" ", 4) + "{1000}\r\n", "a", imap.ResponseCodeTooBig, false},
		{"literal budget non-sync", "a ID (" + strings.Repeat("{1000+}\r\n"+big[:1000]+" ", 4) + "{1000+}\r\n" + big[:1000] + ")\r\n", "a", imap.ResponseCodeTooBig, true},

		// Literals for commands that take none (§4 case 39).
		{"sync literal not allowed", "a SELECT {5}\r\n", "a", "", false},
		{"huge sync literal not allowed", "a APPEND INBOX {10000000}\r\n", "a", "", false},
		{"non-sync literal not allowed", "a APPEND INBOX {10+}\r\n0123\r\nb LO GOUT\r\n", "a", "", false},
		{"non-sync literal not allowed, big", "a APPEND INBOX {2000+}\r\n" + big[:2000] + "\r\n", "a", imap.ResponseCodeTooBig, true},
		{"literal for AUTHENTICATE", "a AUTHENTICATE PLAIN {5}\r\n", "a", "", false},

		// Recovery after a syntax error on a line that ends in a literal.
		{"error before non-sync literal", "a LOGIN \"x {3+}\r\nabc\r\n", "a", "", false},
		{"error before two non-sync literals", "a LOGIN \"x {3+}\r\nabc {2+}\r\nde\r\n", "a", "", false},
		{"error before big non-sync literal", "a LOGIN \"x {3000+}\r\n" + big[:3000] + "\r\n", "a", imap.ResponseCodeTooBig, true},
		{"error before sync literal", "a LOGIN \"x {3}\r\n", "a", "", false},
		{"error after literal", "a LOGIN {3}\r\nabc \"un\r\n", "a", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The marker shows up in the error text if it echoes input.
			in := strings.ReplaceAll(tt.in, "x", "SECRETX")
			if strings.Contains(tt.name, "budget") || strings.Contains(tt.name, "big") || strings.Contains(tt.name, "LITERAL-") {
				in = tt.in // sizes matter
			}
			d, conts := newTestDecoder(in + "z NOOP\r\n")
			cmd, err := d.ReadCommand()
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("ReadCommand = %+v, %v; want *Error", cmd, err)
			}
			if e.Tag != tt.tag || e.Code != tt.code || e.Fatal != tt.fatal {
				t.Errorf("got %+v, want tag %q code %q fatal %v", *e, tt.tag, tt.code, tt.fatal)
			}
			if e.Text == "" || strings.Contains(e.Error(), "SECRETX") || strings.ContainsAny(e.Text, "\r\n") {
				t.Errorf("bad error text %q", e.Text)
			}
			wantConts := 0 // synchronizing literals accepted before the error
			switch tt.name {
			case "error after literal", "NUL in literal", "bad literal terminator":
				wantConts = 1
			}
			if *conts != wantConts {
				t.Errorf("Continue called %d times, want %d", *conts, wantConts)
			}
			if e.Fatal {
				return
			}
			cmd, err = d.ReadCommand()
			if err != nil || cmd.Tag != "z" || cmd.Name != "NOOP" {
				t.Fatalf("next command = %+v, %v; want z NOOP", cmd, err)
			}
		})
	}
}

func TestReadCommandNoContinue(t *testing.T) {
	d := NewDecoder(bufio.NewReader(strings.NewReader("a LOGIN {5}\r\nz NOOP\r\n")))
	_, err := d.ReadCommand()
	var e *Error
	if !errors.As(err, &e) || e.Fatal || e.Tag != "a" {
		t.Fatalf("got %v, want non-fatal *Error", err)
	}
	if cmd, err := d.ReadCommand(); err != nil || cmd.Tag != "z" {
		t.Fatalf("next command = %+v, %v", cmd, err)
	}
}

func TestReadCommandContinueError(t *testing.T) {
	boom := errors.New("write failed")
	d := NewDecoder(bufio.NewReader(strings.NewReader("a LOGIN {5}\r\nalice bob\r\n")))
	d.Continue = func() error { return boom }
	if _, err := d.ReadCommand(); err != boom {
		t.Fatalf("got %v, want %v", err, boom)
	}
}

func TestReadCommandAllowLiteral(t *testing.T) {
	d, conts := newTestDecoder("a XYZZY {3}\r\nabc\r\nb LOGIN {3}\r\n")
	d.AllowLiteral = func(name string) bool { return name == "XYZZY" }
	cmd, err := d.ReadCommand()
	if err != nil || cmd.Name != "XYZZY" || !reflect.DeepEqual(cmd.Args[0], lit("abc")) {
		t.Fatalf("got %+v, %v", cmd, err)
	}
	if _, err := d.ReadCommand(); err == nil || *conts != 1 {
		t.Fatalf("LOGIN literal: err %v, %d continues", err, *conts)
	}
}

// TestLiteralInjection: bytes inside a literal are never parsed as a
// command, whether the literal is accepted or skipped (§4 cases 4 and 24).
func TestLiteralInjection(t *testing.T) {
	d, _ := newTestDecoder("a LOGIN alice {13+}\r\np\r\nb LOGOUT\r\n\r\n" +
		"c APPEND x {13+}\r\np\r\nd LOGOUT\r\n\r\n" +
		"e NOOP\r\n")
	cmd, err := d.ReadCommand()
	if err != nil || cmd.Args[1].Value != "p\r\nb LOGOUT\r\n" {
		t.Fatalf("got %+v, %v", cmd, err)
	}
	if _, err := d.ReadCommand(); err == nil {
		t.Fatal("APPEND literal accepted")
	}
	cmd, err = d.ReadCommand()
	if err != nil || cmd.Tag != "e" {
		t.Fatalf("got %+v, %v; want e NOOP", cmd, err)
	}
}

// TestPipelined: commands sent in one segment are parsed in order, and the
// decoder never consumes bytes of the next command (the session hands
// them to the backend or TLS layer).
func TestPipelined(t *testing.T) {
	in := "a CAPABILITY\r\nb NOOP\r\nc ID NIL\r\nd LOGIN {5+}\r\nalice bob\r\ne LOGOUT\r\n"
	br := bufio.NewReader(strings.NewReader(in))
	d := NewDecoder(br)
	const tags = "abcde"
	for i, want := range []string{"a CAPABILITY", "b NOOP", "c ID", "d LOGIN", "e LOGOUT"} {
		cmd, err := d.ReadCommand()
		if err != nil {
			t.Fatal(err)
		}
		if got := cmd.Tag + " " + cmd.Name; got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
		rest := ""
		if i+1 < len(tags) {
			rest = in[strings.Index(in, "\r\n"+tags[i+1:i+2]+" ")+2:]
		}
		if br.Buffered() != len(rest) {
			t.Fatalf("after %s: %d bytes buffered, want %d", want, br.Buffered(), len(rest))
		}
	}
	if _, err := d.ReadCommand(); err != io.EOF {
		t.Fatalf("got %v, want io.EOF", err)
	}
}

func TestReadCommandEOF(t *testing.T) {
	for _, in := range []string{"a NOO", "a LOGIN {5+}\r\nab", "a LOGIN {5}\r\nab", "a LOGIN {5+}\r\nalice", "a LOGIN \"x {5+}\r\nab"} {
		d, _ := newTestDecoder(in)
		if _, err := d.ReadCommand(); err != io.ErrUnexpectedEOF {
			t.Errorf("%q: got %v, want io.ErrUnexpectedEOF", in, err)
		}
	}
	d, _ := newTestDecoder("")
	if _, err := d.ReadCommand(); err != io.EOF {
		t.Errorf("empty input: got %v, want io.EOF", err)
	}
	if _, err := new(Decoder).ReadCommand(); err == nil {
		t.Error("zero Decoder without reader: no error")
	}
}

type errReader struct {
	data string
	err  error
}

func (r *errReader) Read(p []byte) (int, error) {
	if r.data == "" {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestReadCommandIOError(t *testing.T) {
	for _, in := range []string{"", "a NOOP", "a LOGIN {5+}\r\nab"} {
		d := NewDecoder(bufio.NewReader(&errReader{in, os.ErrDeadlineExceeded}))
		if _, err := d.ReadCommand(); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%q: got %v, want deadline error", in, err)
		}
	}
}

// endless is an io.Reader of endless bytes b, counting what was read.
type endless struct {
	b byte
	n int
}

func (r *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.b
	}
	r.n += len(p)
	return len(p), nil
}

// allocated returns the bytes allocated while f runs.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestOverlongLine: an endless line fails once MaxLine is exceeded,
// without reading much past it and with memory bounded by MaxLine, not by
// the input (§4 case 1).
func TestOverlongLine(t *testing.T) {
	r := &endless{b: 'A'}
	d := NewDecoder(bufio.NewReader(r))
	var err error
	n := allocated(func() { _, err = d.ReadCommand() })
	var e *Error
	if !errors.As(err, &e) || !e.Fatal || e.Code != imap.ResponseCodeTooBig {
		t.Fatalf("got %v, want fatal TOOBIG *Error", err)
	}
	if r.n > DefaultMaxLine+2*4096 {
		t.Errorf("read %d bytes for a %d-byte limit", r.n, DefaultMaxLine)
	}
	if n > 4*DefaultMaxLine {
		t.Errorf("allocated %d bytes", n)
	}

	// 64 KiB then CRLF: same, and the line is not parsed.
	d, _ = newTestDecoder(strings.Repeat("A", 64<<10) + "\r\n")
	if _, err := d.ReadCommand(); !errors.As(err, &e) || !e.Fatal {
		t.Fatalf("64 KiB line: got %v", err)
	}

	// The limit counts all fragments of a command line.
	d, _ = newTestDecoder("a LOGIN {1+}\r\nx " + strings.Repeat("A", DefaultMaxLine) + "\r\n")
	if _, err := d.ReadCommand(); !errors.As(err, &e) || !e.Fatal || e.Tag != "a" {
		t.Fatalf("long continuation: got %v", err)
	}
}

// TestDeepNesting: 100,000 "(" fail with memory bounded by the line
// limit, whether the line limit or the depth limit stops them (§4 case 7).
func TestDeepNesting(t *testing.T) {
	in := "a ID " + strings.Repeat("(", 100000) + "\r\nz NOOP\r\n"
	d, _ := newTestDecoder(in)
	var err error
	n := allocated(func() { _, err = d.ReadCommand() })
	var e *Error
	if !errors.As(err, &e) || !e.Fatal {
		t.Fatalf("default limits: got %v, want fatal *Error", err)
	}
	if n > 4*DefaultMaxLine {
		t.Errorf("default limits: allocated %d bytes", n)
	}

	d, _ = newTestDecoder(in)
	d.MaxLine = 1 << 20
	n = allocated(func() { _, err = d.ReadCommand() })
	if !errors.As(err, &e) || e.Fatal || e.Tag != "a" {
		t.Fatalf("long lines allowed: got %v, want non-fatal *Error", err)
	}
	if n > 8*uint64(len(in)) {
		t.Errorf("long lines allowed: allocated %d bytes for %d input bytes", n, len(in))
	}
	if cmd, err := d.ReadCommand(); err != nil || cmd.Tag != "z" {
		t.Fatalf("next command = %+v, %v", cmd, err)
	}

	d, _ = newTestDecoder("a ID " + strings.Repeat("(", 8) + strings.Repeat(")", 8) + "\r\n")
	if _, err := d.ReadCommand(); err != nil {
		t.Fatalf("depth 8: %v", err)
	}
}

// TestHugeLiteralNoAllocation: refused literal sizes are never allocated.
func TestHugeLiteralNoAllocation(t *testing.T) {
	for _, in := range []string{"a LOGIN {4294967296}\r\n", "a LOGIN {99999999999999999999}\r\n", "a LOGIN {1000000+}\r\n"} {
		d, conts := newTestDecoder(in)
		n := allocated(func() { _, _ = d.ReadCommand() })
		if n > 64<<10 || *conts != 0 { // slack for runtime noise; the sizes are MBs or GBs
			t.Errorf("%q: allocated %d bytes, %d continues", in, n, *conts)
		}
	}
}

func TestLimits(t *testing.T) {
	d, conts := newTestDecoder("a LOGIN {10}\r\n0123456789 {11}\r\nb NOOP\r\n")
	d.MaxLiteral = 10
	cmd, err := d.ReadCommand()
	var e *Error
	if !errors.As(err, &e) || e.Fatal || e.Code != imap.ResponseCodeTooBig || *conts != 1 {
		t.Fatalf("got %+v, %v, %d continues", cmd, err, *conts)
	}
	if cmd, err := d.ReadCommand(); err != nil || cmd.Tag != "b" {
		t.Fatalf("next command = %+v, %v", cmd, err)
	}

	d, _ = newTestDecoder("a ID (a b c)\r\nb ID (a b c d)\r\n")
	d.MaxArgs = 4
	if _, err := d.ReadCommand(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadCommand(); err == nil {
		t.Fatal("5 arguments accepted with MaxArgs 4")
	}

	d, _ = newTestDecoder("a NOOP\r\nb NOOPS\r\n")
	d.MaxLine = len("a NOOP\r\n")
	if _, err := d.ReadCommand(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadCommand(); err == nil {
		t.Fatal("line over MaxLine accepted")
	}
}

func TestReadLine(t *testing.T) {
	d, _ := newTestDecoder("AGFsaWNlAHNlY3JldA==\r\n*\r\n\r\nbare\n" + strings.Repeat("A", 100) + "\r\n" + "z NOOP\r\n")
	for _, want := range []string{"AGFsaWNlAHNlY3JldA==", "*", "", "bare"} {
		got, err := d.ReadLine(16 << 10)
		if err != nil || string(got) != want {
			t.Fatalf("got %q, %v; want %q", got, err, want)
		}
	}
	_, err := d.ReadLine(99)
	var e *Error
	if !errors.As(err, &e) || !e.Fatal {
		t.Fatalf("over-long: got %v, want fatal *Error", err)
	}

	d, _ = newTestDecoder(strings.Repeat("A", 100) + "\r\n")
	if got, err := d.ReadLine(100); err != nil || len(got) != 100 {
		t.Fatalf("line of exactly max: %d bytes, %v", len(got), err)
	}
	if _, err := d.ReadLine(0); err != io.EOF {
		t.Fatalf("at EOF: %v", err)
	}
	d, _ = newTestDecoder("abc")
	if _, err := d.ReadLine(0); err != io.ErrUnexpectedEOF {
		t.Fatalf("partial line: %v", err)
	}

	r := &endless{b: 'A'}
	d = NewDecoder(bufio.NewReader(r))
	n := allocated(func() { _, err = d.ReadLine(16 << 10) })
	if !errors.As(err, &e) || !e.Fatal || r.n > 16<<10+2*4096 || n > 4*(16<<10) {
		t.Fatalf("endless line: %v after %d bytes, %d allocated", err, r.n, n)
	}
}

func TestReadLineOwned(t *testing.T) {
	d, _ := newTestDecoder("first\r\nsecond\r\n")
	a, _ := d.ReadLine(0)
	b, _ := d.ReadLine(0)
	if string(a) != "first" || string(b) != "second" {
		t.Fatalf("got %q, %q", a, b)
	}
}

func TestReset(t *testing.T) {
	d, _ := newTestDecoder("a NOOP\r\n")
	d.MaxLine = 100
	d.Reset(bufio.NewReader(strings.NewReader("b NOOP\r\n")))
	if cmd, err := d.ReadCommand(); err != nil || cmd.Tag != "b" || d.MaxLine != 100 {
		t.Fatalf("got %+v, %v", cmd, err)
	}
}

func BenchmarkReadCommandLogin(b *testing.B) {
	const line = "a1 LOGIN \"alice@example.test\" \"secret pass\"\r\n"
	r := strings.NewReader(line)
	br := bufio.NewReader(r)
	d := NewDecoder(br)
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		r.Reset(line)
		br.Reset(r)
		cmd, err := d.ReadCommand()
		if err != nil || len(cmd.Args) != 2 {
			b.Fatal(cmd, err)
		}
	}
}

func TestLiteralHeader(t *testing.T) {
	tests := []struct {
		in      string
		n       int
		nonSync bool
		ok      bool
	}{
		{"{0}", 0, false, true},
		{"{1024}", 1024, false, true},
		{"{007+}", 7, true, true},
		{"{4294967296}", hugeLiteral, false, true},
		{"{99999999999999999999}", hugeLiteral, false, true},
		{"{99999999999999999999+}", hugeLiteral, true, true},
		{"{}", 0, false, false},
		{"{+}", 0, false, false},
		{"{1", 0, false, false},
		{"{1++}", 0, false, false},
		{"{-1}", 0, false, false},
	}
	for _, tt := range tests {
		n, nonSync, _, ok := parseLiteralHeader(tt.in)
		if n != tt.n || nonSync != tt.nonSync || ok != tt.ok {
			t.Errorf("parseLiteralHeader(%q) = %d, %v, %v", tt.in, n, nonSync, ok)
		}
		n, nonSync, ok = trailingLiteral("a LOGIN " + tt.in)
		if n != tt.n || nonSync != tt.nonSync || ok != tt.ok {
			t.Errorf("trailingLiteral(%q) = %d, %v, %v", tt.in, n, nonSync, ok)
		}
	}
	d, conts := newTestDecoder("a LOGIN {1024}\r\n" + strings.Repeat("p", 1024) + " {1024+}\r\n" + strings.Repeat("q", 1024) + "\r\n")
	if cmd, err := d.ReadCommand(); err != nil || len(cmd.Args[1].Value) != 1024 || *conts != 1 {
		t.Fatalf("literals of MaxLiteral bytes: %v", err)
	}
}
