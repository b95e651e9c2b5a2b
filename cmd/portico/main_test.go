package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
	ptls "github.com/portico-mail/portico/tls"
)

// binary builds the portico command once per test run.
func binary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "portico")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func run(t *testing.T, bin string, env []string, args ...string) (string, int) {
	t.Helper()
	return runWithin(t, 30*time.Second, bin, env, args...)
}

// runWithin runs the binary and returns its output and exit code; a
// command still running after d is killed (exit code -1).
func runWithin(t *testing.T, d time.Duration, bin string, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// exampleConfig writes the shipped example with its certificate paths
// pointing at a fresh self-signed pair.
func exampleConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	_, certFile, keyFile := testcert.Files(t, dir, "mail.example.com")
	data := strings.ReplaceAll(string(config.Example), "/etc/portico/tls/cert.pem", certFile)
	data = strings.ReplaceAll(data, "/etc/portico/tls/key.pem", keyFile)
	return writeConfig(t, dir, data)
}

func TestCommands(t *testing.T) {
	bin := binary(t)
	example := exampleConfig(t)
	env := []string{"PORTICO_REDIS_PASSWORD=secret-from-env", "PORTICO_BRUTE_FORCE_KEY=brute-force-key-from-env"}

	t.Run("check-config example", func(t *testing.T) {
		out, code := run(t, bin, env, "check-config", example)
		if code != 0 || !strings.Contains(out, "OK") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		if strings.Contains(out, "secret-from-env") {
			t.Fatal("the secret was printed")
		}
	})
	t.Run("check-config misspelt key", func(t *testing.T) {
		b, _ := os.ReadFile(example)
		bad := strings.Replace(string(b), "address:", "adress:", 1)
		p := filepath.Join(t.TempDir(), "bad.yaml")
		os.WriteFile(p, []byte(bad), 0o600)
		out, code := run(t, bin, env, "check-config", p)
		if code == 0 || !strings.Contains(out, `"adress"`) || !strings.Contains(out, "bad.yaml:") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("check-config missing env", func(t *testing.T) {
		out, code := run(t, bin, nil, "check-config", example)
		if code == 0 || !strings.Contains(out, "PORTICO_REDIS_PASSWORD") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("version", func(t *testing.T) {
		out, code := run(t, bin, nil, "version")
		if code != 0 || !strings.HasPrefix(out, "portico ") {
			t.Fatalf("exit %d: %s", code, out)
		}
	})
	for _, sub := range []string{"serve", "demo", "check-config", "version"} {
		t.Run(sub+" -h", func(t *testing.T) {
			out, code := run(t, bin, nil, sub, "-h")
			if code != 0 || !strings.Contains(out, "Usage: portico "+sub) {
				t.Fatalf("exit %d: %s", code, out)
			}
		})
	}
	t.Run("unknown command", func(t *testing.T) {
		if _, code := run(t, bin, nil, "frobnicate"); code != 2 {
			t.Fatalf("exit %d", code)
		}
	})
	// A usage error names what is wrong before the usage text.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "portico: missing command"},
		{[]string{"move", "-config", example, "alice@example.com"}, "portico move: missing BACKEND"},
		{[]string{"move", "alice@example.com", "imap2", "-hold"}, "flag needs an argument: -hold"},
		{[]string{"route", "set", "alice@example.com", "imap1"}, `portico route set: unexpected argument "imap1"`},
		{[]string{"route", "set", "alice@example.com", "-nope"}, "flag provided but not defined: -nope"},
		{[]string{"route"}, "portico route: missing action (delete, explain, get, set)"},
		{[]string{"backend", "frob"}, `portico backend: unknown action "frob"`},
		{[]string{"backend", "weight", "imap1"}, "portico backend weight: missing WEIGHT"},
		{[]string{"serve", example}, fmt.Sprintf("portico serve: unexpected argument %q", example)},
		{[]string{"check-config"}, "portico check-config: missing FILE"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, code := run(t, bin, nil, tc.args...)
			if code != 2 || !strings.HasPrefix(out, tc.want) || !strings.Contains(out, "Usage: portico") {
				t.Fatalf("exit %d, want 2 and %q first:\n%s", code, tc.want, out)
			}
		})
	}
}

func freeAddr(t *testing.T) string {
	return "127.0.0.1:" + strconv.Itoa(testsrv.FreePort(t))
}

// startBinary runs the binary until the test ends and returns its output
// so far on demand.
// writeConfig writes a config file into dir and returns its path.
func writeConfig(t *testing.T, dir, text string) string {
	t.Helper()
	p := filepath.Join(dir, "portico.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startServe starts "portico serve -config config" and waits up to wait
// for it to listen on addr. It returns the command and its stderr, which
// holds the log.
func startServe(t *testing.T, bin, config, addr string, wait time.Duration) (*exec.Cmd, *testsrv.Buffer) {
	t.Helper()
	cmd, stderr, _ := startBinary(t, bin, "serve", "-config", config)
	if err := testsrv.WaitDial(addr, wait); err != nil {
		t.Fatalf("serve did not listen: %v\n%s", err, stderr)
	}
	return cmd, stderr
}

func startBinary(t *testing.T, bin string, args ...string) (*exec.Cmd, *testsrv.Buffer, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stderr testsrv.Buffer
	cmd.Stderr = &stderr
	stdout, _ := cmd.StdoutPipe()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, &stderr, bufio.NewReader(stdout)
}

// TestDemo runs `portico demo` and the commands it prints, IMAP and POP3,
// with curl.
func TestDemo(t *testing.T) {
	bin := binary(t)
	curl := testsrv.LookPath(t, "curl")
	imaps, imap, pop3s, pop3 := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	cmd, stderr, stdout := startBinary(t, bin, "demo", "-imaps", imaps, "-imap", imap, "-pop3s", pop3s, "-pop3", pop3)
	if err := testsrv.WaitDial(imaps, 10*time.Second); err != nil {
		t.Fatalf("demo did not listen: %v\n%s", err, stderr)
	}
	for _, a := range []string{imap, pop3s, pop3} {
		if err := testsrv.WaitDial(a, 5*time.Second); err != nil {
			t.Fatalf("demo did not listen on %s: %v\n%s", a, err, stderr)
		}
	}
	// Every curl command the demo prints works as pasted.
	var cmds []string
	for {
		l, err := stdout.ReadString('\n')
		if err != nil {
			t.Fatalf("demo output: %v", err)
		}
		if strings.HasPrefix(strings.TrimSpace(l), "curl ") {
			cmds = append(cmds, strings.TrimSpace(l))
		}
		if strings.Contains(l, "Ctrl-C") {
			break
		}
	}
	var pop3Cmds int
	for _, c := range cmds {
		if strings.Contains(c, "pop3") {
			pop3Cmds++
		}
	}
	if len(cmds) < 5 || pop3Cmds < 3 {
		t.Fatalf("demo printed %d curl commands, %d of them POP3: %q", len(cmds), pop3Cmds, cmds)
	}
	for _, c := range cmds {
		args := shellWords(c)[1:]
		out, err := exec.Command(curl, append([]string{"-sS", "--max-time", "10"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s\n%s", c, err, out, stderr)
		}
		// A command that prints nothing looks broken to whoever pastes
		// it (curl's imaps://host/INBOX lists INBOX's children: none).
		if len(bytes.TrimSpace(out)) == 0 {
			t.Fatalf("%s printed nothing", c)
		}
		switch {
		case strings.Contains(c, "imaps://"+imaps+"/ "), strings.Contains(c, "imap://"+imap+"/ "):
			if !strings.Contains(string(out), `* LIST () "/" INBOX`) {
				t.Fatalf("%s: no INBOX in\n%s", c, out)
			}
		case strings.Contains(c, "INBOX?ALL"):
			if string(out) != "* SEARCH 1 2 3\r\n" {
				t.Fatalf("%s:\n%q, want alice's three messages", c, out)
			}
		case strings.Contains(c, "UID=1"), strings.Contains(c, "pop3s://"+pop3s+"/1 "):
			// The same first message over IMAP and POP3, byte for byte.
			if want := membackend.SampleMessage("alice@example.test", 1); !bytes.Equal(out, want) {
				t.Fatalf("%s:\n%q\nwant\n%q", c, out, want)
			}
		case strings.Contains(c, "pop3s://"+pop3s+"/ "):
			// LIST: alice's three messages.
			if want := listing(t, "alice@example.test", 3); string(out) != want {
				t.Fatalf("%s:\n%q\nwant\n%q", c, out, want)
			}
		case strings.Contains(c, "pop3://"+pop3+"/ "):
			if want := listing(t, "bob@example.test", 2); string(out) != want {
				t.Fatalf("%s:\n%q\nwant\n%q", c, out, want)
			}
		}
	}
	// Ctrl-C ends it cleanly.
	cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo exit: %v\n%s", err, stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("demo did not exit on SIGINT")
	}
	if strings.Contains(stderr.String(), "alice-demo") {
		t.Fatal("a password reached the log")
	}
}

// listing is what curl prints for a POP3 LIST of the demo user's n
// messages.
func listing(t *testing.T, user string, n int) string {
	t.Helper()
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "%d %d\r\n", i, len(membackend.SampleMessage(user, i)))
	}
	return b.String()
}

// shellWords splits a pasted command line, honouring single quotes.
func shellWords(s string) []string {
	var words []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '\'':
			inQuote, have = !inQuote, true
		case r == ' ' && !inQuote:
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		words = append(words, cur.String())
	}
	return words
}

// TestServe runs `portico serve` from a config file with a static route to
// an in-memory backend and logs in with curl over both listeners.
func TestServe(t *testing.T) {
	bin := binary(t)
	curl := testsrv.LookPath(t, "curl")
	be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "carol@example.test", Password: "carol-pw", Messages: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	dir := t.TempDir()
	imaps, imap := freeAddr(t), freeAddr(t)
	cfg := `
listeners:
  - {name: imaps, mode: imaps, address: "` + imaps + `"}
  - {name: imap, mode: imap, address: "` + imap + `"}
` + certFiles(t, dir) + `routing:
  default_domain: example.test
  static:
    - {user: carol@example.test, backend: mem}
backends:
  - {name: mem, address: "` + be.Addr() + `"}
`
	cmd, stderr := startServe(t, bin, writeConfig(t, dir, cfg), imaps, 10*time.Second)
	for _, url := range []string{"imaps://" + imaps + "/INBOX;UID=1", "imap://" + imap + "/INBOX;UID=1"} {
		// "carol" without domain: default_domain completes it.
		out, err := exec.Command(curl, "-sS", "-k", "--ssl-reqd", "--max-time", "10", "-u", "carol:carol-pw", url).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Subject: Demo message 1") {
			t.Fatalf("%s: %v\n%s\n%s", url, err, out, stderr)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("serve exit: %v\n%s", err, stderr)
	}
	log := stderr.String()
	if !strings.Contains(log, "session end") || !strings.Contains(log, "user=carol@example.test") {
		t.Fatalf("no session log line:\n%s", log)
	}
	if strings.Contains(log, "carol-pw") {
		t.Fatal("a password reached the log")
	}
	_ = net.IPv4len
}

// TestServeSIGHUP: a new certificate written over the old files is served
// after SIGHUP, without restarting and without dropping a spliced session.
func TestServeSIGHUP(t *testing.T) {
	bin := binary(t)
	be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "carol@example.test", Password: "carol-pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	old, _ := ptls.SelfSigned("old.example.test")
	ptls.WritePEM(old, certFile, keyFile)
	imaps := freeAddr(t)
	cfg := `
listeners:
  - {name: imaps, mode: imaps, address: "` + imaps + `"}
tls:
  certificates:
    - {cert_file: ` + certFile + `, key_file: ` + keyFile + `}
  reload_interval: 1h
routing:
  static:
    - {user: carol@example.test, backend: mem}
backends:
  - {name: mem, address: "` + be.Addr() + `"}
`
	cmd, stderr := startServe(t, bin, writeConfig(t, dir, cfg), imaps, 10*time.Second)
	served := func() string {
		c, err := tls.Dial("tcp", imaps, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"imap"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].DNSNames[0]
	}
	if got := served(); got != "old.example.test" {
		t.Fatalf("served %s", got)
	}
	// A session spliced before the reload survives it.
	sess, err := tls.Dial("tcp", imaps, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"imap"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	br := bufio.NewReader(sess)
	br.ReadString('\n')
	io.WriteString(sess, "a LOGIN carol@example.test carol-pw\r\n")
	if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("login: %q", l)
	}

	// A loop of full logins runs across several reloads and sees no
	// failure.
	stop := make(chan struct{})
	var logins, failures atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := loginOnce(imaps); err != nil {
					failures.Add(1)
					t.Errorf("login during reloads: %v", err)
				}
				logins.Add(1)
			}
		}()
	}
	for i := range 3 {
		name := fmt.Sprintf("new%d.example.test", i)
		fresh, _ := ptls.SelfSigned(name)
		ptls.WritePEM(fresh, certFile, keyFile)
		cmd.Process.Signal(syscall.SIGHUP)
		deadline := time.Now().Add(10 * time.Second)
		for served() != name {
			if time.Now().After(deadline) {
				t.Fatalf("new certificate not served after SIGHUP\n%s", stderr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	close(stop)
	wg.Wait()
	if logins.Load() == 0 || failures.Load() != 0 {
		t.Fatalf("%d logins across reloads, %d failed", logins.Load(), failures.Load())
	}
	io.WriteString(sess, "b NOOP\r\n")
	if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "b OK") {
		t.Fatalf("session after reload: %q", l)
	}
}

// loginOnce does a whole session: TLS, LOGIN, LOGOUT.
func loginOnce(addr string) error {
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"imap"}})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		return err
	}
	io.WriteString(c, "a LOGIN carol@example.test carol-pw\r\nb LOGOUT\r\n")
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if strings.HasPrefix(l, "a ") && !strings.HasPrefix(l, "a OK") {
			return fmt.Errorf("login: %q", l)
		}
		if strings.HasPrefix(l, "b OK") {
			return nil
		}
	}
}
