package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

func message(subject string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: sender@example.test\r\nTo: %s\r\nSubject: %s\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%d@example.test>\r\n\r\n", aliceUser, subject, time.Now().UnixNano())
	b.Write(body)
	return b.Bytes()
}

func runCurl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := tryCurl(t, args...)
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// tryCurl runs curl from clientIP and returns its output and how it
// failed, if it did.
func tryCurl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	curl := mustLookPath(t, "curl")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, curl, append([]string{"-sS", "--max-time", "20", "--interface", clientIP}, args...)...).CombinedOutput()
	return string(out), err
}

// TestCurl fetches a message with curl over implicit TLS and over STARTTLS,
// with each way curl can log in.
func TestCurl(t *testing.T) {
	e := newEnv(t, envOptions{})
	msgA := message("for alice", []byte("Hello Alice\r\n"))
	e.d1.AddMessage(t, aliceUser, "INBOX", msgA)
	msgB := message("for bob", []byte("Hello Bob\r\n"))
	e.d2.AddMessage(t, bobUser, "INBOX", msgB)

	for _, tc := range []struct {
		name string
		url  string
		user string
		opts []string
		want []byte
	}{
		{"imaps", "imaps://" + e.imaps + "/INBOX;UID=1", aliceUser + ":" + alicePass, nil, msgA},
		{"imaps-sasl-ir", "imaps://" + e.imaps + "/INBOX;UID=1", aliceUser + ":" + alicePass, []string{"--sasl-ir", "--login-options", "AUTH=PLAIN"}, msgA},
		{"imaps-auth-login", "imaps://" + e.imaps + "/INBOX;UID=1", aliceUser + ":" + alicePass, []string{"--login-options", "AUTH=LOGIN"}, msgA},
		{"starttls", "imap://" + e.imap + "/INBOX;UID=1", bobUser + ":" + bobPass, []string{"--ssl-reqd"}, msgB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--cacert", e.caFile, "-u", tc.user}, tc.opts...)
			// The certificate is for localhost; curl must check it.
			url := strings.Replace(tc.url, "127.0.0.1", "localhost", 1)
			args = append(args, "--resolve", "localhost:"+port(url)+":127.0.0.1", url)
			got := runCurl(t, args...)
			if got != string(tc.want) {
				t.Fatalf("curl got %q, want %q", got, tc.want)
			}
		})
	}
}

func port(url string) string {
	host := strings.SplitN(strings.SplitN(url, "://", 2)[1], "/", 2)[0]
	return host[strings.LastIndex(host, ":")+1:]
}

const imaplibScript = `
import imaplib, ssl, sys
host, imaps_port, imap_port, cafile, user, pw, bob, bobpw = sys.argv[1:9]
ctx = ssl.create_default_context(cafile=cafile)

# LOGIN with the password as a synchronizing literal: spaces, quotes,
# backslash and non-ASCII bytes all pass untouched.
M = imaplib.IMAP4_SSL(host, int(imaps_port), ssl_context=ctx)
M.literal = pw.encode("utf-8")
typ, dat = M._simple_command("LOGIN", user)
assert typ == "OK", (typ, dat)
M.state = "AUTH"
typ, dat = M.select("INBOX")
assert typ == "OK", (typ, dat)
M.logout()
print("literal-login ok")

# Two-step AUTHENTICATE PLAIN (imaplib has no SASL-IR).
M = imaplib.IMAP4_SSL(host, int(imaps_port), ssl_context=ctx)
typ, dat = M.authenticate("PLAIN", lambda _: b"\0" + user.encode() + b"\0" + pw.encode("utf-8"))
assert typ == "OK", (typ, dat)
typ, dat = M.select("INBOX")
assert typ == "OK", (typ, dat)
M.logout()
print("authenticate-plain ok")

# "*" cancels an exchange; the connection stays usable.
M = imaplib.IMAP4_SSL(host, int(imaps_port), ssl_context=ctx)
try:
    M.authenticate("PLAIN", lambda _: None)
    raise SystemExit("cancel was accepted")
except imaplib.IMAP4.error as e:
    assert "cancel" in str(e).lower(), e
M.literal = pw.encode("utf-8")
typ, dat = M._simple_command("LOGIN", user)
assert typ == "OK", (typ, dat)
M.state = "AUTH"
M.logout()
print("cancel ok")

# STARTTLS, then a plain quoted LOGIN.
M = imaplib.IMAP4(host, int(imap_port))
assert "LOGINDISABLED" in M.capabilities, M.capabilities
M.starttls(ssl_context=ctx)
assert "LOGINDISABLED" not in M.capabilities, M.capabilities
assert "AUTH=PLAIN" in M.capabilities, M.capabilities
typ, dat = M.login(bob, bobpw)
assert typ == "OK", (typ, dat)
typ, dat = M.select("INBOX")
assert typ == "OK", (typ, dat)
M.logout()
print("starttls ok")
`

// TestPythonImaplib drives Portico with python3's imaplib.
func TestPythonImaplib(t *testing.T) {
	e := newEnv(t, envOptions{})
	py := mustLookPath(t, "python3")
	script := writeTemp(t, "client.py", imaplibScript)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, script, "localhost", port("x://"+e.imaps), port("x://"+e.imap),
		e.caFile, aliceUser, alicePass, bobUser, bobPass).CombinedOutput()
	if err != nil {
		t.Fatalf("python3 imaplib: %v\n%s", err, out)
	}
	for _, want := range []string{"literal-login ok", "authenticate-plain ok", "cancel ok", "starttls ok"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
}

func (e *env) goClient(t *testing.T, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	conn, err := dialer.Dial("tcp", e.imaps)
	if err != nil {
		t.Fatal(err)
	}
	tc := tlsClient(conn, e)
	if opts == nil {
		opts = &imapclient.Options{}
	}
	c := imapclient.New(tc, opts)
	t.Cleanup(func() { c.Close() })
	if err := c.Login(aliceUser, alicePass).Wait(); err != nil {
		t.Fatalf("login: %v", err)
	}
	return c
}

// TestGoIMAPClient runs a mailbox's everyday commands through Portico to
// Dovecot with go-imap's client.
func TestGoIMAPClient(t *testing.T) {
	e := newEnv(t, envOptions{})
	big := make([]byte, 1<<20)
	rand.Read(big)
	bigMsg := message("big", []byte(base64.StdEncoding.EncodeToString(big)[:1<<20]))
	e.d1.AddMessage(t, aliceUser, "INBOX", message("small", []byte("small body\r\n")))
	e.d1.AddMessage(t, aliceUser, "INBOX", bigMsg)

	updates := make(chan uint32, 16)
	c := e.goClient(t, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				updates <- *d.NumMessages
			}
		},
	}})
	if !c.Caps().Has(imap.CapIdle) {
		t.Fatalf("backend capabilities did not reach the client: %v", c.Caps())
	}
	if c.Caps().Has(imap.CapUnauthenticate) {
		t.Fatal("UNAUTHENTICATE must be filtered out")
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 2 {
		t.Fatalf("INBOX has %d messages, want 2", sel.NumMessages)
	}

	// FETCH of a 1 MiB message, compared byte for byte.
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(2), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if got := msgs[0].FindBodySection(section); !bytes.Equal(got, bigMsg) {
		t.Fatalf("1 MiB message differs: got %d bytes, want %d", len(got), len(bigMsg))
	}
	// Headers only.
	hdr := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, Peek: true}
	msgs, err = c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{hdr}}).Collect()
	if err != nil || !bytes.Contains(msgs[0].FindBodySection(hdr), []byte("Subject: small")) {
		t.Fatalf("header fetch: %v", err)
	}

	// STORE flags.
	if _, err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	msgs, err = c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Flags: true}).Collect()
	if err != nil || !hasFlag(msgs[0].Flags, imap.FlagFlagged) {
		t.Fatalf("flags after STORE: %v %v", msgs, err)
	}

	// CREATE, COPY, RENAME, DELETE.
	if err := c.Create("Archive", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Copy(imap.SeqSetNum(1), "Archive").Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Rename("Archive", "Archive2", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status("Archive2", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 1 {
		t.Fatalf("STATUS after COPY and RENAME: %v %v", st, err)
	}
	if err := c.Delete("Archive2").Wait(); err != nil {
		t.Fatal(err)
	}

	// EXPUNGE.
	if _, err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	if seqs, err := c.Expunge().Collect(); err != nil || len(seqs) != 1 {
		t.Fatalf("EXPUNGE: %v %v", seqs, err)
	}

	// IDLE: a message delivered meanwhile is announced through the splice.
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	other := e.goClient(t, nil)
	// APPEND of a literal over 64 KiB from a second session.
	appended := message("appended", bytes.Repeat([]byte("0123456789abcdef\r\n"), 5000))
	ac := other.Append("INBOX", int64(len(appended)), nil)
	ac.Write(appended)
	ac.Close()
	if _, err := ac.Wait(); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-updates:
		if n != 2 {
			t.Fatalf("IDLE saw %d messages, want 2", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("IDLE: no EXISTS after APPEND")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err = c.Fetch(imap.SeqSetNum(2), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil || !bytes.Equal(msgs[0].FindBodySection(section), appended) {
		t.Fatalf("appended message differs: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}

	// Dovecot saw the real client address, forwarded with ID.
	line := e.d1.WaitLog(t, "rip="+clientIP, 5*time.Second)
	if !strings.Contains(line, "user=<"+aliceUser+">") {
		t.Errorf("dovecot login line: %s", line)
	}
	// ...and Portico's session id, so the two logs can be joined.
	m := regexp.MustCompile(`msg="logged in" session=(\S+) user=` + regexp.QuoteMeta(aliceUser)).FindStringSubmatch(e.logs.String())
	if m == nil || !strings.Contains(line, "session=<"+m[1]+">") {
		t.Errorf("dovecot login line lacks Portico's session id: %s", line)
	}
}

func hasFlag(flags []imap.Flag, f imap.Flag) bool {
	for _, x := range flags {
		if x == f {
			return true
		}
	}
	return false
}
