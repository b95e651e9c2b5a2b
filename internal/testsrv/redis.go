package testsrv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Redis is a redis-server process owned by a test.
type Redis struct {
	Addr string

	cmd      *exec.Cmd
	exited   chan struct{}
	stopOnce sync.Once
}

// StartRedis starts redis-server on a random loopback port without
// persistence and stops it in t.Cleanup.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin := LookPath(t, "redis-server", "/usr/bin/redis-server")
	dir := t.TempDir()
	return startRedisNode(t, bin, dir, "redis", func(port int) []string {
		return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir, "--protected-mode", "no"}
	})
}

// waitReady also watches the process, so that a redis-server that died (for
// example on a port taken meanwhile) is not mistaken for the thief.
func (r *Redis) waitReady(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		select {
		case <-r.exited:
			return fmt.Errorf("redis-server exited: %v", r.cmd.ProcessState)
		default:
		}
		err := WaitDial(r.Addr, 100*time.Millisecond)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
	}
}

// Pid returns the server's process ID: tests pause it (SIGSTOP) to play a
// slow Redis, and benchmarks read its CPU time.
func (r *Redis) Pid() int { return r.cmd.Process.Pid }

// Stop kills the server; it is safe to call more than once, so a test can
// take Redis down on purpose.
func (r *Redis) Stop() {
	r.stopOnce.Do(func() {
		r.cmd.Process.Kill()
		<-r.exited
	})
}

// startRedisNode starts redis-server with args(port) on a free port,
// logging to dir/<name>-<port>.log, and stops it in t.Cleanup. args is
// called again on a new port when the previous one was taken meanwhile.
func startRedisNode(t testing.TB, bin, dir, name string, args func(port int) []string) *Redis {
	t.Helper()
	var lastErr error
	var logPath string
	for attempt := 0; attempt < 3; attempt++ {
		port := FreePort(t)
		logPath = filepath.Join(dir, fmt.Sprintf("%s-%d.log", name, port))
		logf, err := os.Create(logPath)
		if err != nil {
			t.Fatalf("testsrv: %v", err)
		}
		cmd := exec.Command(bin, args(port)...)
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		err = cmd.Start()
		logf.Close()
		if err != nil {
			t.Fatalf("testsrv: start %s: %v", bin, err)
		}
		r := &Redis{Addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd, exited: make(chan struct{})}
		go func() { cmd.Wait(); close(r.exited) }()
		if lastErr = r.waitReady(10 * time.Second); lastErr == nil {
			t.Cleanup(r.Stop)
			return r
		}
		r.Stop()
	}
	b, _ := os.ReadFile(logPath)
	t.Fatalf("testsrv: %s (%s) did not start: %v\n%s", name, bin, lastErr, b)
	return nil
}
