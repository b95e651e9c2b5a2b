package wire

import (
	"bufio"
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
)

func TestAppendStatus(t *testing.T) {
	tests := []struct {
		tag  string
		typ  imap.StatusResponseType
		code imap.ResponseCode
		text string
		want string
	}{
		{"a1", imap.StatusResponseTypeOK, "", "NOOP completed", "a1 OK NOOP completed\r\n"},
		{"", imap.StatusResponseTypeBad, "", "Invalid tag", "* BAD Invalid tag\r\n"},
		{"*", imap.StatusResponseTypeBye, imap.ResponseCodeUnavailable, "Server shutting down", "* BYE [UNAVAILABLE] Server shutting down\r\n"},
		{"a2", imap.StatusResponseTypeNo, imap.ResponseCodeAuthenticationFailed, "Authentication failed", "a2 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"},
		{"a3", imap.StatusResponseTypeOK, "CAPABILITY IMAP4rev1 IDLE", "Logged in", "a3 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"},
		{"a4", imap.StatusResponseTypeOK, "", "", "a4 OK\r\n"},
		{"", imap.StatusResponseTypePreAuth, "", "hi", "* PREAUTH hi\r\n"},
		// Nothing can end the line or the code early.
		{"a5", imap.StatusResponseTypeNo, "X]\r\nY", "bad\r\n* OK [ALERT] spoofed\x00", "a5 NO [XY] bad* OK [ALERT] spoofed\r\n"},
	}
	for _, tt := range tests {
		got := string(AppendStatus(nil, tt.tag, tt.typ, tt.code, tt.text))
		if got != tt.want {
			t.Errorf("AppendStatus(%q, %q, %q, %q) = %q, want %q", tt.tag, tt.typ, tt.code, tt.text, got, tt.want)
		}
		var buf bytes.Buffer
		if err := WriteStatus(&buf, tt.tag, tt.typ, tt.code, tt.text); err != nil || buf.String() != tt.want {
			t.Errorf("WriteStatus = %q, %v", buf.String(), err)
		}
	}
}

func TestAppendStrings(t *testing.T) {
	tests := []struct {
		in, astring, str string
		needsLiteral     bool
	}{
		{"alice", "alice", `"alice"`, false},
		{"a]b", "a]b", `"a]b"`, false},
		{"", `""`, `""`, false},
		{"NIL", `"NIL"`, `"NIL"`, false},
		{"nil", `"nil"`, `"nil"`, false},
		{"a b", `"a b"`, `"a b"`, false},
		{`a"b\c`, `"a\"b\\c"`, `"a\"b\\c"`, false},
		{"{5}", `"{5}"`, `"{5}"`, false},
		{"a%b*", `"a%b*"`, `"a%b*"`, false},
		{"p\tw", "\"p\tw\"", "\"p\tw\"", false},
		{"pä", "{3}\r\npä", "{3}\r\npä", true},
		{"p\r\nb LOGOUT", "{11}\r\np\r\nb LOGOUT", "{11}\r\np\r\nb LOGOUT", true},
		{"a\x00b", "{3}\r\na\x00b", "{3}\r\na\x00b", true},
	}
	for _, tt := range tests {
		if got := string(AppendAString(nil, tt.in)); got != tt.astring {
			t.Errorf("AppendAString(%q) = %q, want %q", tt.in, got, tt.astring)
		}
		if got := string(AppendString(nil, tt.in)); got != tt.str {
			t.Errorf("AppendString(%q) = %q, want %q", tt.in, got, tt.str)
		}
		if got := NeedsLiteral(tt.in); got != tt.needsLiteral {
			t.Errorf("NeedsLiteral(%q) = %v", tt.in, got)
		}
	}
	if got := string(AppendQuoted([]byte("x "), "a\r\nb\x00\"")); got != `x "ab\""` {
		t.Errorf("AppendQuoted dropped nothing: %q", got)
	}
	if got := string(AppendQuoted(nil, "pä")); got != `"pä"` {
		t.Errorf("AppendQuoted 8-bit: %q", got)
	}
	if got := string(AppendLiteralHeader(nil, 42, true)); got != "{42+}\r\n" {
		t.Errorf("AppendLiteralHeader = %q", got)
	}
	if got := string(AppendLiteralHeader(nil, 0, false)); got != "{0}\r\n" {
		t.Errorf("AppendLiteralHeader = %q", got)
	}
}

// TestEncodeDecodeRoundTrip: values with special bytes encoded with
// AppendAString come back intact and are never parsed as a second
// command (§4 cases 23, 24).
func TestEncodeDecodeRoundTrip(t *testing.T) {
	values := []string{"alice", "p\r\nb LOGOUT", `"`, `\`, "{3}", "*", "?", "[ab]", "%u", "%{pass}",
		"a b", "pässwört", "\xff\xfe", "NIL", "", "x)", "(x"}
	var in []byte
	for i, v := range values {
		in = append(in, "t"...)
		in = append(in, byte('a'+i))
		in = append(in, " LOGIN "...)
		in = AppendAString(in, v)
		in = append(in, ' ')
		in = AppendAString(in, v+"!")
		in = append(in, "\r\n"...)
	}
	d, _ := newTestDecoder(string(in))
	for i, v := range values {
		cmd, err := d.ReadCommand()
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if cmd.Tag != "t"+string(rune('a'+i)) || cmd.Name != "LOGIN" || len(cmd.Args) != 2 {
			t.Fatalf("%q: got %+v", v, cmd)
		}
		for j, want := range []string{v, v + "!"} {
			if got, ok := cmd.Args[j].AString(); !ok || got != want || cmd.Args[j].Kind == KindNIL {
				t.Errorf("%q: arg %d = %+v", v, j, cmd.Args[j])
			}
		}
	}
}

// appendCommand re-encodes a parsed command, keeping each argument's
// form (atom, NIL, quoted or literal), for the fuzz round trip.
func appendCommand(dst []byte, cmd *Command) []byte {
	dst = append(dst, cmd.Tag...)
	dst = append(dst, ' ')
	dst = append(dst, cmd.Name...)
	if len(cmd.Args) > 0 {
		dst = append(dst, ' ')
		dst = appendArgs(dst, cmd.Args)
	}
	return append(dst, "\r\n"...)
}

func appendArgs(dst []byte, args []Arg) []byte {
	for i, a := range args {
		if i > 0 {
			dst = append(dst, ' ')
		}
		switch {
		case a.Kind == KindList:
			dst = append(dst, '(')
			dst = appendArgs(dst, a.List)
			dst = append(dst, ')')
		case a.Kind == KindString && a.Literal:
			dst = AppendLiteralHeader(dst, len(a.Value), false)
			dst = append(dst, a.Value...)
		case a.Kind == KindString:
			dst = AppendQuoted(dst, a.Value)
		default:
			dst = append(dst, a.Value...)
		}
	}
	return dst
}

func FuzzReadCommand(f *testing.F) {
	for _, s := range []string{
		"a1 CAPABILITY\r\n",
		"a1 noop\r\nb LOGOUT\r\n",
		`a2 LOGIN "alice@example.test" "secret pass"` + "\r\n",
		`a3 LOGIN "a\"b" "c\\d"` + "\r\n",
		"a4 LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
		"a5 ID (\"name\" \"Mail\" \"version\" NIL (\"x\" {2}\r\nab))\r\n",
		"a6 ID ()\r\n",
		"a7 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
		"a8 LOGIN \"p\xc3\xa4ss\" {3+}\r\n\xff\x00x\r\n",
		"a9 APPEND INBOX {10+}\r\n0123456789\r\nz NOOP\r\n",
		"* NOOP\r\n+ NOOP\r\n{5} NOOP\r\n\r\n",
		"a LOGIN {4}\r\nuserXpass\r\n",
		"a LOGIN {99999999999999999999}\r\n",
		"a LOGIN {5000+}\r\n\r\nb LOGOUT\r\n",
		"a ID ((((((((((((\r\n",
		"a LOGIN \"x {3+}\r\nabc\r\nb NOOP\n",
	} {
		f.Add([]byte(s))
	}
	const (
		maxLine     = 512
		maxLiteral  = 64
		maxLiterals = 128
		maxDepth    = 4
		maxArgs     = 32
	)
	newDec := func(b []byte, bufSize, lineSlack int) *Decoder {
		d := NewDecoder(bufio.NewReaderSize(bytes.NewReader(b), bufSize))
		d.MaxLine, d.MaxLiteral, d.MaxLiterals, d.MaxDepth, d.MaxArgs = maxLine+lineSlack, maxLiteral, maxLiterals, maxDepth, maxArgs
		d.Continue = func() error { return nil }
		return d
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d := newDec(data, 16, 0) // a tiny buffer exercises lines split across reads
		for range 8 {
			cmd, err := d.ReadCommand()
			if e, ok := err.(*Error); ok {
				if e.Text == "" || strings.ContainsAny(e.Text+e.Tag, "\r\n") {
					t.Fatalf("bad error %+v", e)
				}
				if e.Fatal {
					return
				}
				continue
			}
			if err != nil {
				return // end of input
			}
			if !validTag(cmd.Tag) || cmd.Name == "" || cmd.Name != upperASCII(cmd.Name) {
				t.Fatalf("bad command %+v", cmd)
			}
			var n, size int
			checkArgs(t, cmd.Args, 1, &n, &size)
			if n > maxArgs || size > len(data) {
				t.Fatalf("%d args, %d bytes of values from %d input bytes", n, size, len(data))
			}

			// Re-encoding keeps the command. CRLF may replace a bare
			// LF, hence the slack in the line limit.
			enc := appendCommand(nil, cmd)
			cmd2, err := newDec(enc, 4096, maxLine).ReadCommand()
			if err != nil {
				t.Fatalf("re-parse of %q: %v", enc, err)
			}
			if !reflect.DeepEqual(cmd, cmd2) {
				t.Fatalf("round trip changed the command:\n%+v\n%+v", cmd, cmd2)
			}
		}
	})
}

func validTag(s string) bool {
	if s == "" || len(s) > MaxTagLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tagChar[s[i]] {
			return false
		}
	}
	return true
}

func checkArgs(t *testing.T, args []Arg, depth int, n, size *int) {
	for _, a := range args {
		*n++
		*size += len(a.Value)
		switch a.Kind {
		case KindList:
			if depth > 4 {
				t.Fatalf("list nested %d deep", depth)
			}
			checkArgs(t, a.List, depth+1, n, size)
		case KindString:
			if a.Literal && len(a.Value) > 64 {
				t.Fatalf("string of %d bytes over MaxLiteral", len(a.Value))
			}
			if strings.IndexByte(a.Value, 0) >= 0 || !a.Literal && strings.ContainsAny(a.Value, "\r\n") {
				t.Fatalf("bad string %q", a.Value)
			}
		case KindAtom, KindNIL:
			if !isAString(a.Value) {
				t.Fatalf("bad atom %q", a.Value)
			}
		default:
			t.Fatalf("bad kind %v", a.Kind)
		}
	}
}
