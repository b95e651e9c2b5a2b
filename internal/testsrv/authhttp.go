package testsrv

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// AuthHTTPUser is one line of the users file of scripts/auth-http-service.py:
// Login with Password is accepted and sent to Backend (IP:port), with
// UpstreamUser/UpstreamPass as Auth-User/Auth-Pass when set.
type AuthHTTPUser struct {
	Login, Password, Backend   string
	UpstreamUser, UpstreamPass string
}

// AuthHTTP is scripts/auth-http-service.py, an auth_http service written
// the way nginx mail users write them (python3's http.server), run by a
// test.
type AuthHTTP struct {
	URL  string // http://127.0.0.1:port/auth
	Addr string

	record string
	cmd    *exec.Cmd
	exited chan struct{}
}

// AuthHTTPRequest is one request the service received.
type AuthHTTPRequest struct {
	Request string      `json:"request"` // "GET /auth HTTP/1.0"
	Conn    int         `json:"conn"`    // the TCP connection, numbered from 1
	Headers [][2]string `json:"headers"` // as received, in order
}

// Header returns the value of the first header named name, exactly as
// spelt.
func (r AuthHTTPRequest) Header(name string) (string, bool) {
	for _, h := range r.Headers {
		if h[0] == name {
			return h[1], true
		}
	}
	return "", false
}

// StartAuthHTTP starts the service with users and stops it in t.Cleanup.
// With http11 it answers HTTP/1.1 and keeps connections open; without, it
// answers HTTP/1.0 and closes each, as nginx expects.
func StartAuthHTTP(t testing.TB, http11 bool, users ...AuthHTTPUser) *AuthHTTP {
	t.Helper()
	python := LookPath(t, "python3", "/usr/bin/python3")
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "scripts", "auth-http-service.py")
	dir := t.TempDir()
	var b strings.Builder
	for _, u := range users {
		f := []string{u.Login, u.Password, u.Backend}
		if u.UpstreamUser != "" {
			f = append(f, u.UpstreamUser, u.UpstreamPass)
		}
		b.WriteString(strings.Join(f, "\t") + "\n")
	}
	usersFile := filepath.Join(dir, "users")
	if err := os.WriteFile(usersFile, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &AuthHTTP{record: filepath.Join(dir, "record.jsonl"), exited: make(chan struct{})}
	args := []string{script, "0", usersFile, s.record}
	if http11 {
		args = append(args, "--http11")
	}
	s.cmd = exec.Command(python, args...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	s.cmd.Stderr = os.Stderr
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("testsrv: auth-http-service: %v", err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(s.Stop)
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		port, ok := strings.CutPrefix(strings.TrimSpace(line), "ready ")
		if !ok {
			t.Fatalf("testsrv: auth-http-service did not start: %q", line)
		}
		s.Addr = "127.0.0.1:" + port
		s.URL = "http://" + s.Addr + "/auth"
	case <-time.After(10 * time.Second):
		t.Fatal("testsrv: auth-http-service did not start within 10s")
	}
	return s
}

// Requests returns what the service received so far.
func (s *AuthHTTP) Requests(t testing.TB) []AuthHTTPRequest {
	t.Helper()
	b, err := os.ReadFile(s.record)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var reqs []AuthHTTPRequest
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var r AuthHTTPRequest
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("testsrv: auth-http-service record %q: %v", line, err)
		}
		reqs = append(reqs, r)
	}
	return reqs
}

// Stop kills the service; it is safe to call twice.
func (s *AuthHTTP) Stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
}
