package app

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"
)

// UpgradeReadyTimeout bounds how long Upgrade waits for the new process to
// serve: long enough for a first ACME issuance, which happens before its
// listeners open.
var UpgradeReadyTimeout = 6 * time.Minute

// Upgrade starts the binary at this process's executable path (the new
// version, once installed there) with the same arguments, hands it the
// listening sockets and waits until it serves. It returns the new
// process's id; this process then stops accepting and drains (see
// Process), and Run returns when its sessions are gone. On error nothing
// has changed: this process goes on serving, and the new one, if it
// started, has been stopped.
//
// The new process reads the config file itself: an upgrade is also a
// reload, including of what a reload cannot change.
func (p *Process) Upgrade() (pid int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.app == nil {
		return 0, errors.New("upgrade: not serving yet")
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("upgrade failed, this process goes on serving: %w", err)
			p.Logger.Error(err.Error())
			p.status.write("upgrade", err)
		}
	}()
	select {
	case <-p.handedOn:
		return 0, errors.New("this process has handed over already")
	default:
	}
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("finding the binary: %w", err)
	}
	keys, files, err := p.app.sockets.files()
	if err != nil {
		return 0, err
	}
	// The files are duplicates: the child gets its own copies at exec,
	// and ours go when Start has returned, whatever happened.
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer readyR.Close()
	h := handOn{Ready: 3, Sockets: make(map[string]int, len(keys))}
	for i, key := range keys {
		h.Sockets[key] = 4 + i // ExtraFiles start at descriptor 3
	}
	env, _ := json.Marshal(h)
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), upgradeEnv+"="+string(env))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = append([]*os.File{readyW}, files...)
	p.Logger.Info("upgrade: starting the new process", "binary", exe, "sockets", len(keys))
	err = cmd.Start()
	readyW.Close() // the child holds the write end now; EOF means it died
	if err != nil {
		return 0, fmt.Errorf("starting %s: %w", exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps the child if it ends while we live

	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(readyR).ReadString('\n')
		line <- l
	}()
	timeout := time.NewTimer(UpgradeReadyTimeout)
	defer timeout.Stop()
	select {
	case l := <-line:
		if l == "ready\n" {
			break
		}
		// The child closed its end without being ready: it is exiting.
		select {
		case werr := <-exited:
			return 0, fmt.Errorf("the new process %d exited before serving (%v); its log says why", cmd.Process.Pid, werr)
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			return 0, fmt.Errorf("the new process %d gave up before serving; its log says why", cmd.Process.Pid)
		}
	case <-timeout.C:
		cmd.Process.Kill()
		readyR.Close() // ends the reader goroutine
		return 0, fmt.Errorf("the new process %d did not serve within %s; stopped", cmd.Process.Pid, UpgradeReadyTimeout)
	case <-p.runCtx.Done():
		// Asked to stop while the new process starts: stop both, rather
		// than hold the shutdown until the new one is ready.
		cmd.Process.Kill()
		readyR.Close()
		return 0, fmt.Errorf("shutting down: the new process %d was stopped", cmd.Process.Pid)
	}
	pid = cmd.Process.Pid
	p.Logger.Info("upgrade: the new process serves; this one stops accepting", "new_pid", pid)
	p.status.writeUpgraded(pid)
	close(p.handedOn)
	return pid, nil
}
