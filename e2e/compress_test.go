package e2e

import (
	"bufio"
	"compress/flate"
	"io"
	"strings"
	"testing"
)

// flateConn speaks COMPRESS=DEFLATE (RFC 4978) over a connection: raw
// deflate both ways, flushed after every command.
type flateConn struct {
	w *flate.Writer
	r *bufio.Reader
}

// TestCompress: COMPRESS DEFLATE negotiated with Dovecot through Portico;
// everything after it is compressed and passes the splice untouched.
func TestCompress(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.d1.AddMessage(t, aliceUser, "INBOX", message("compressed", []byte(strings.Repeat("squeeze me ", 500)+"\r\n")))
	c := e.dialRaw(t, true)
	ok := last(c.cmd("a", `LOGIN "`+aliceUser+`" {`+itoa(len(alicePass))+`+}`+"\r\n"+alicePass))
	if !strings.HasPrefix(ok, "a OK [CAPABILITY ") || !strings.Contains(ok, "COMPRESS=DEFLATE") {
		t.Fatalf("login: %q", ok)
	}
	if got := last(c.cmd("z", "COMPRESS DEFLATE")); !strings.HasPrefix(got, "z OK") {
		t.Fatalf("COMPRESS: %q", got)
	}
	if c.br.Buffered() != 0 {
		t.Fatal("bytes after the COMPRESS OK were not compressed")
	}
	fw, _ := flate.NewWriter(c.conn, flate.DefaultCompression)
	fc := &flateConn{w: fw, r: bufio.NewReader(flate.NewReader(c.conn))}
	send := func(tag, line string) []string {
		io.WriteString(fc.w, tag+" "+line+"\r\n")
		if err := fc.w.Flush(); err != nil {
			t.Fatal(err)
		}
		var lines []string
		for {
			l, err := fc.r.ReadString('\n')
			if err != nil {
				t.Fatalf("read compressed: %v", err)
			}
			lines = append(lines, strings.TrimRight(l, "\r\n"))
			if strings.HasPrefix(l, tag+" ") {
				return lines
			}
		}
	}
	if got := last(send("b", "SELECT INBOX")); !strings.HasPrefix(got, "b OK") {
		t.Fatalf("SELECT over COMPRESS: %q", got)
	}
	body := send("c", "FETCH 1 BODY.PEEK[TEXT]")
	if !strings.Contains(strings.Join(body, "\n"), "squeeze me squeeze me") || !strings.HasPrefix(last(body), "c OK") {
		t.Fatalf("FETCH over COMPRESS: %q", body)
	}
	if got := last(send("d", "LOGOUT")); !strings.HasPrefix(got, "d OK") {
		t.Fatalf("LOGOUT over COMPRESS: %q", got)
	}
}
