package membackend

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/portico-mail/portico/internal/testsrv"
)

// dotty has lines a POP3 server must dot-stuff, and one that merely
// contains a dot.
var dotty = []byte("From: <x@example.test>\r\nSubject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nmiddle . dot\r\n.\r\nend\r\n")

// poplibScript logs in with python3's poplib and prints what it saw as
// JSON; argv: host port user password.
const poplibScript = `
import base64, json, poplib, sys
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = {}
p = poplib.POP3(host, port, timeout=10)
out["welcome"] = p.getwelcome().decode()
out["capa"] = sorted(p.capa().keys())
p.user(user)
p.pass_(pw)
out["stat"] = list(p.stat())
out["list"] = [l.decode() for l in p.list()[1]]
out["uidl"] = [l.decode() for l in p.uidl()[1]]
out["list2"] = p.list(2).decode()
out["retr"] = []
for i in range(1, out["stat"][0] + 1):
    resp, lines, octets = p.retr(i)
    out["retr"].append({"resp": resp.decode(), "octets": octets,
        "data": base64.b64encode(b"\r\n".join(lines) + b"\r\n").decode()})
resp, lines, _ = p.top(1, 1)
out["top"] = base64.b64encode(b"\r\n".join(lines) + b"\r\n").decode()
p.dele(1)
out["stat_after_dele"] = list(p.stat())
p.quit()
p = poplib.POP3(host, port, timeout=10)
p.user(user)
p.pass_(pw)
out["stat_after_quit"] = list(p.stat())
p.quit()
p = poplib.POP3(host, port, timeout=10)
p.user(user)
try:
    p.pass_(pw + "-wrong")
    out["bad"] = "accepted"
except poplib.error_proto as e:
    out["bad"] = str(e.args[0].decode())
print(json.dumps(out))
`

type poplibResult struct {
	Welcome string
	Capa    []string
	Stat    []int
	List    []string
	UIDL    []string
	List2   string
	Retr    []struct {
		Resp   string
		Octets int
		Data   string
	}
	Top           string
	StatAfterDele []int `json:"stat_after_dele"`
	StatAfterQuit []int `json:"stat_after_quit"`
	Bad           string
}

// TestPOP3Poplib reads a maildrop with a real client, python3's poplib:
// the messages IMAP holds, byte for byte, dot-stuffed lines included.
func TestPOP3Poplib(t *testing.T) {
	python := testsrv.LookPath(t, "python3")
	const user, pw = "alice@example.test", "pw with spaces"
	b, err := Start("127.0.0.1:0", User{Name: user, Password: pw, Messages: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Append(user, "INBOX", dotty); err != nil {
		t.Fatal(err)
	}
	if err := b.Append(user, "Sent", []byte("Subject: not in INBOX\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	want := [][]byte{SampleMessage(user, 1), SampleMessage(user, 2), dotty}

	host, port, _ := net.SplitHostPort(b.POP3Addr())
	out, err := exec.Command(python, "-c", poplibScript, host, port, user, pw).CombinedOutput()
	if err != nil {
		t.Fatalf("poplib: %v\n%s", err, out)
	}
	var got poplibResult
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.HasPrefix(got.Welcome, "+OK") {
		t.Errorf("greeting %q", got.Welcome)
	}
	if fmt.Sprint(got.Capa) != "[AUTH-RESP-CODE PIPELINING RESP-CODES SASL TOP UIDL USER XCLIENT]" {
		t.Errorf("CAPA %v", got.Capa)
	}
	total := 0
	for i, m := range want {
		total += len(m)
		if l := fmt.Sprintf("%d %d", i+1, len(m)); got.List[i] != l {
			t.Errorf("LIST line %q, want %q", got.List[i], l)
		}
		if len(got.Retr) > i {
			data, _ := base64.StdEncoding.DecodeString(got.Retr[i].Data)
			if string(data) != string(m) {
				t.Errorf("RETR %d:\n%q\nwant\n%q", i+1, data, m)
			}
			if got.Retr[i].Resp != fmt.Sprintf("+OK %d octets", len(m)) {
				t.Errorf("RETR %d answered %q", i+1, got.Retr[i].Resp)
			}
		}
	}
	if len(got.List) != 3 || len(got.Retr) != 3 {
		t.Errorf("LIST %q, %d RETRs", got.List, len(got.Retr))
	}
	if fmt.Sprint(got.Stat) != fmt.Sprint([]int{3, total}) {
		t.Errorf("STAT %v, want 3 %d", got.Stat, total)
	}
	if fmt.Sprint(got.UIDL) != "[1 1 2 2 3 3]" {
		t.Errorf("UIDL %q", got.UIDL)
	}
	if got.List2 != fmt.Sprintf("+OK 2 %d", len(want[1])) {
		t.Errorf("LIST 2: %q", got.List2)
	}
	top, _ := base64.StdEncoding.DecodeString(got.Top)
	if wantTop := strings.SplitAfter(string(want[0]), "\r\n\r\n")[0] + "Hello alice@example.test,\r\n"; string(top) != wantTop {
		t.Errorf("TOP 1 1: %q, want %q", top, wantTop)
	}
	if fmt.Sprint(got.StatAfterDele) != fmt.Sprint([]int{2, total - len(want[0])}) {
		t.Errorf("STAT after DELE: %v", got.StatAfterDele)
	}
	if fmt.Sprint(got.StatAfterQuit) != fmt.Sprint([]int{2, total - len(want[0])}) {
		t.Errorf("STAT after DELE and QUIT: %v", got.StatAfterQuit)
	}
	if got.Bad != "-ERR [AUTH] Authentication failed." {
		t.Errorf("bad password: %q", got.Bad)
	}

	// The message deleted over POP3 is gone from IMAP's INBOX too; the
	// others are still there.
	c, err := imapclient.DialInsecure(b.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, pw).Wait(); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if *st.NumMessages != 2 {
		t.Errorf("IMAP INBOX has %d messages after DELE 1 and QUIT, want 2", *st.NumMessages)
	}
}

// TestPOP3Large fetches a 1 MiB message with poplib.
func TestPOP3Large(t *testing.T) {
	python := testsrv.LookPath(t, "python3")
	b, err := Start("127.0.0.1:0", User{Name: "big@example.test", Password: "pw", Messages: 1, MessageSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	host, port, _ := net.SplitHostPort(b.POP3Addr())
	out, err := exec.Command(python, "-c", `
import hashlib, poplib, sys
p = poplib.POP3(sys.argv[1], int(sys.argv[2]), timeout=10)
p.user("big@example.test"); p.pass_("pw")
resp, lines, octets = p.retr(1)
print(resp.decode(), hashlib.sha256(b"\r\n".join(lines) + b"\r\n").hexdigest())
p.quit()
`, host, port).CombinedOutput()
	if err != nil {
		t.Fatalf("poplib: %v\n%s", err, out)
	}
	msg := SizedMessage("big@example.test", 1, 1<<20)
	if want := fmt.Sprintf("+OK %d octets %x\n", 1<<20, sha256sum(msg)); string(out) != want {
		t.Fatalf("got %q, want %q", out, want)
	}
}

type pop3Client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialPOP3(t *testing.T, addr string) *pop3Client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	p := &pop3Client{t: t, c: c, r: bufio.NewReader(c)}
	p.expect("+OK ")
	return p
}

func (p *pop3Client) send(lines ...string) {
	p.t.Helper()
	if _, err := io.WriteString(p.c, strings.Join(lines, "\r\n")+"\r\n"); err != nil {
		p.t.Fatal(err)
	}
}

func (p *pop3Client) line() string {
	p.t.Helper()
	l, err := p.r.ReadString('\n')
	if err != nil {
		p.t.Fatalf("read: %v (after %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		p.t.Fatalf("line without CRLF: %q", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// expect reads a line and checks that it starts with prefix.
func (p *pop3Client) expect(prefix string) string {
	p.t.Helper()
	l := p.line()
	if !strings.HasPrefix(l, prefix) {
		p.t.Fatalf("got %q, want %q...", l, prefix)
	}
	return l
}

// multi reads the lines of a multi-line response up to its ".", as sent.
func (p *pop3Client) multi() []string {
	p.t.Helper()
	var lines []string
	for {
		l := p.line()
		if l == "." {
			return lines
		}
		lines = append(lines, l)
	}
}

func plain(authz, user, pw string) string {
	return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + user + "\x00" + pw))
}

// TestPOP3Protocol speaks POP3 on the wire: AUTH PLAIN, XCLIENT,
// pipelining, dot-stuffing as sent, TOP, DELE, RSET and the errors.
func TestPOP3Protocol(t *testing.T) {
	const user, pw = "bob@example.test", "bob-pw"
	b, err := Start("127.0.0.1:0", User{Name: user, Password: pw, Messages: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Append(user, "INBOX", dotty); err != nil {
		t.Fatal(err)
	}
	msg1 := SampleMessage(user, 1)

	p := dialPOP3(t, b.POP3Addr())
	p.send("CAPA")
	p.expect("+OK")
	if got := strings.Join(p.multi(), " "); got != "USER SASL PLAIN UIDL TOP PIPELINING RESP-CODES AUTH-RESP-CODE XCLIENT" {
		t.Errorf("CAPA: %s", got)
	}
	p.send("XCLIENT ADDR=192.0.2.1 PORT=4711 SESSION=abc TTL=5")
	p.expect("+OK")
	p.send("STAT")
	p.expect("-ERR ")
	p.send("PASS " + pw)
	p.expect("-ERR ")
	p.send("AUTH")
	p.expect("+OK")
	if got := p.multi(); fmt.Sprint(got) != "[PLAIN]" {
		t.Errorf("AUTH mechanisms: %q", got)
	}
	p.send("AUTH CRAM-MD5")
	p.expect("-ERR ")
	p.send("AUTH PLAIN " + plain("", user, "wrong"))
	p.expect("-ERR [AUTH] ")
	p.send("AUTH PLAIN " + plain("someone@example.test", user, pw))
	p.expect("-ERR [AUTH] ")
	p.send("AUTH PLAIN !!!")
	p.expect("-ERR ")
	p.send("AUTH PLAIN")
	p.expect("+ ")
	p.send("*")
	p.expect("-ERR ")
	p.send("AUTH PLAIN")
	p.expect("+ ")
	p.send(plain(user, user, pw))
	p.expect("+OK")
	p.send("XCLIENT ADDR=192.0.2.1")
	p.expect("-ERR ")
	p.send("CAPA")
	p.expect("+OK")
	if got := strings.Join(p.multi(), " "); got != "UIDL TOP PIPELINING RESP-CODES AUTH-RESP-CODE" {
		t.Errorf("CAPA after login: %s", got)
	}

	// Pipelined: one write, the answers in order.
	p.send("STAT", "LIST", "UIDL 2", "NOOP", "RETR 2", "TOP 1 0", "TOP 2 2", "list 3", "LIST 0", "LIST x", "TOP 1", "NOOP")
	p.expect(fmt.Sprintf("+OK 2 %d", len(msg1)+len(dotty)))
	p.expect("+OK")
	if got := p.multi(); fmt.Sprint(got) != fmt.Sprintf("[1 %d 2 %d]", len(msg1), len(dotty)) {
		t.Errorf("LIST: %q", got)
	}
	p.expect("+OK 2 2")
	p.expect("+OK")
	p.expect(fmt.Sprintf("+OK %d octets", len(dotty)))
	if got, want := strings.Join(p.multi(), "\r\n"), "From: <x@example.test>\r\nSubject: dots\r\n\r\n..\r\n...\r\n..leading dot\r\nmiddle . dot\r\n..\r\nend"; got != want {
		t.Errorf("RETR 2 sent\n%q\nwant\n%q", got, want)
	}
	p.expect("+OK")
	if got, want := strings.Join(p.multi(), "\r\n")+"\r\n", strings.SplitAfter(string(msg1), "\r\n\r\n")[0]; got != want {
		t.Errorf("TOP 1 0: %q, want %q", got, want)
	}
	p.expect("+OK")
	if got := strings.Join(p.multi(), "|"); got != "From: <x@example.test>|Subject: dots||..|..." {
		t.Errorf("TOP 2 2: %q", got)
	}
	for range 4 {
		p.expect("-ERR ")
	}
	p.expect("+OK")

	p.send("DELE 1")
	p.expect("+OK")
	p.send("DELE 1", "RETR 1", "LIST 1")
	p.expect("-ERR ")
	p.expect("-ERR ")
	p.expect("-ERR ")
	p.send("STAT")
	p.expect(fmt.Sprintf("+OK 1 %d", len(dotty)))
	p.send("LIST")
	p.expect("+OK")
	if got := p.multi(); fmt.Sprint(got) != fmt.Sprintf("[2 %d]", len(dotty)) {
		t.Errorf("LIST after DELE: %q", got)
	}
	p.send("RSET")
	p.expect("+OK 2 messages")
	p.send("RETR 1")
	p.expect("+OK")
	p.multi()
	p.send("BOGUS", "USER x")
	p.expect("-ERR ")
	p.expect("-ERR ")
	p.send("QUIT")
	p.expect("+OK")
	if _, err := p.r.ReadByte(); err != io.EOF {
		t.Errorf("after QUIT: %v", err)
	}

	// Nothing was deleted: RSET undid the DELE. USER/PASS logs in too.
	p = dialPOP3(t, b.POP3Addr())
	p.send("USER "+user, "PASS "+pw, "STAT", "QUIT")
	p.expect("+OK")
	p.expect("+OK")
	p.expect("+OK 2 ")
	p.expect("+OK")

	// An unknown user and an empty AUTH PLAIN answer.
	p = dialPOP3(t, b.POP3Addr())
	p.send("USER nobody@example.test", "PASS "+pw, "AUTH PLAIN =")
	p.expect("+OK")
	p.expect("-ERR [AUTH] ")
	p.expect("-ERR [AUTH] ")

	// QUIT in AUTHORIZATION state.
	p.send("QUIT")
	p.expect("+OK")
}

// TestPOP3LongLine: a line longer than the bound is refused and ends the
// session.
func TestPOP3LongLine(t *testing.T) {
	b, err := Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p := dialPOP3(t, b.POP3Addr())
	p.send("USER " + strings.Repeat("x", 2*maxPOP3Line))
	p.expect("-ERR ")
	if _, err := p.r.ReadByte(); err != io.EOF {
		t.Errorf("after a long line: %v", err)
	}
}

// TestPOP3Concurrent: sessions are independent, and DELE in one is not
// seen by another that logged in before the first one's QUIT.
func TestPOP3Concurrent(t *testing.T) {
	const user = "carol@example.test"
	b, err := Start("127.0.0.1:0", User{Name: user, Password: "pw", Messages: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p1, p2 := dialPOP3(t, b.POP3Addr()), dialPOP3(t, b.POP3Addr())
	for _, p := range []*pop3Client{p1, p2} {
		p.send("USER "+user, "PASS pw")
		p.expect("+OK")
		p.expect("+OK")
	}
	p1.send("DELE 2", "QUIT")
	p1.expect("+OK")
	p1.expect("+OK")
	p2.send("UIDL 2", "STAT")
	p2.expect("+OK 2 2")
	p2.expect("+OK 3 ")
	p3 := dialPOP3(t, b.POP3Addr())
	p3.send("USER "+user, "PASS pw", "UIDL")
	p3.expect("+OK")
	p3.expect("+OK")
	p3.expect("+OK")
	if got := p3.multi(); fmt.Sprint(got) != "[1 1 2 3]" {
		t.Errorf("UIDL after another session's DELE 2: %q", got)
	}
}

// TestPOP3Close: Close ends idle and logged-in sessions, and their
// goroutines are gone when it returns.
func TestPOP3Close(t *testing.T) {
	before := runtime.NumGoroutine()
	b, err := Start("127.0.0.1:0", User{Name: "dave@example.test", Password: "pw", Messages: 1})
	if err != nil {
		t.Fatal(err)
	}
	var clients []*pop3Client
	for i := range 10 {
		p := dialPOP3(t, b.POP3Addr())
		if i%2 == 0 {
			p.send("USER dave@example.test", "PASS pw")
			p.expect("+OK")
			p.expect("+OK")
		}
		clients = append(clients, p)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	n := len(b.popConns)
	b.mu.Unlock()
	if n != 0 {
		t.Errorf("%d POP3 connections left after Close", n)
	}
	for _, p := range clients {
		if _, err := p.r.ReadByte(); err != io.EOF {
			t.Errorf("after Close: %v", err)
		}
	}
	if _, err := net.Dial("tcp", b.POP3Addr()); err == nil {
		t.Error("POP3 still accepting after Close")
	}
	// The IMAP server's goroutines end on their own schedule.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

func TestSizedMessage(t *testing.T) {
	small := SampleMessage("u@example.test", 1)
	for _, size := range []int{0, len(small), len(small) + 1, len(small) + 2, len(small) + 3, len(small) + 80, len(small) + 81, len(small) + 82, 4096, 1 << 20} {
		m := SizedMessage("u@example.test", 1, size)
		if want := max(size, len(small)); len(m) != want {
			t.Errorf("size %d: got %d bytes", size, len(m))
		}
		if !strings.HasPrefix(string(m), strings.TrimSuffix(string(small), "\r\n")) || !strings.HasSuffix(string(m), "\r\n") {
			t.Errorf("size %d: not the sample, padded", size)
		}
		for _, l := range strings.SplitAfter(string(m), "\r\n") {
			if len(l) > 80 || strings.Count(l, "\n") > 1 || strings.Contains(strings.TrimSuffix(l, "\r\n"), "\r") {
				t.Fatalf("size %d: line %q", size, l)
			}
		}
	}
	if m := SizedMessage("u@example.test", 1, 4096); !strings.Contains(string(m), "\r\n.") {
		t.Error("no line starts with a dot")
	}
}

func sha256sum(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}
