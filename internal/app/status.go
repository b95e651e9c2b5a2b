package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The pid file and the status file next to it are how `portico reload`
// and `portico upgrade` reach the running process and learn what became
// of their request: the command signals the pid in the pid file, then
// waits for the status file to report the outcome from that pid with a
// sequence number higher than before.

// Status is the last event of a serving process, as written to the status
// file.
type Status struct {
	PID    int       `json:"pid"`
	Seq    int       `json:"seq"`   // counts the events of this pid
	Event  string    `json:"event"` // start, reload or upgrade
	OK     bool      `json:"ok"`
	Error  string    `json:"error,omitempty"`
	NewPID int       `json:"new_pid,omitempty"` // after an upgrade
	Config string    `json:"config"`            // absolute path of the config file
	Time   time.Time `json:"time"`
}

// StatusPath is the status file that goes with pidFile: "" without one.
func StatusPath(pidFile string) string {
	if pidFile == "" {
		return ""
	}
	return pidFile + ".status"
}

func statusPath(pidFile string) string { return StatusPath(pidFile) }

// statusFile writes a process's status; the zero value writes nothing.
type statusFile struct {
	path   string
	config string
	seq    int
}

func (s *statusFile) write(event string, err error) {
	st := Status{Event: event, OK: err == nil}
	if err != nil {
		st.Error = err.Error()
	}
	s.put(st)
}

func (s *statusFile) writeUpgraded(newPID int) {
	s.put(Status{Event: "upgrade", OK: true, NewPID: newPID})
}

func (s *statusFile) put(st Status) {
	if s.path == "" {
		return
	}
	s.seq++
	st.PID, st.Seq, st.Config, st.Time = os.Getpid(), s.seq, s.config, time.Now().UTC()
	b, _ := json.Marshal(st)
	// Written whole under a temporary name and renamed: a reader never
	// sees half of it.
	writeAtomic(s.path, append(b, '\n'))
}

// ReadStatus reads the status file; a missing file is a zero Status.
func ReadStatus(path string) (Status, error) {
	var st Status
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// ReadPIDFile returns the process id in path.
func ReadPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s: not a process id: %q", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// writePIDFile writes this process's id to path, if set.
func writePIDFile(path string) error {
	if path == "" {
		return nil
	}
	if err := writeAtomic(path, []byte(pidString()+"\n")); err != nil {
		return fmt.Errorf("pid_file: %w", err)
	}
	return nil
}

// removePIDFile removes path if it still holds this process's id: after
// an upgrade it holds the new process's.
func removePIDFile(path string) {
	if path == "" {
		return
	}
	if pid, err := ReadPIDFile(path); err == nil && pid == os.Getpid() {
		os.Remove(path)
	}
}

func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails harmlessly after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
