package loadtest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// userHZ is the unit of the CPU times in /proc/PID/stat: the kernel
// exports them in USER_HZ, which is 100 on every Linux architecture
// whatever its CONFIG_HZ (it is what sysconf(_SC_CLK_TCK) returns).
const userHZ = 100

// Processes names the server processes whose CPU and memory a run
// measures.
//
// With Tree, each root counts together with all its descendants. A forking
// server (Dovecot, nginx) is then measured by giving its master's pid: the
// CPU of a tree is the sum, over the root and every live descendant, of
// utime+stime+cutime+cstime. cutime/cstime hold the CPU of children their
// parent has reaped, so the CPU of processes born and reaped between the
// two samples (Dovecot's imap process of a finished session, an imap-login
// process in its high-security mode) is counted once, in its parent, and
// live processes count their own time. Matching processes by name was not
// chosen: it misses exactly those short-lived processes unless their
// parent matches too, and it cannot tell two instances of the same server
// apart (the proxy Dovecot and the backend Dovecot on one machine).
type Processes struct {
	PIDs []int
	Tree bool
}

// procStat is the part of /proc/PID/stat a run needs.
type procStat struct {
	pid, ppid int
	comm      string
	ticks     uint64 // utime+stime+cutime+cstime
}

// ProcCPU is the CPU one root (and its descendants, with Tree) used
// during the measured part of a run.
type ProcCPU struct {
	PID     int     `json:"pid"`
	Comm    string  `json:"comm"`
	Procs   int     `json:"processes"` // live processes counted at the end
	Seconds float64 `json:"cpu_s"`
}

// cpuSample is the CPU time of each root, in ticks.
type cpuSample struct {
	ticks []uint64
	procs []int
	comm  []string
}

func (p Processes) sampleCPU() (cpuSample, error) {
	groups, all, err := p.groups()
	if err != nil {
		return cpuSample{}, err
	}
	s := cpuSample{ticks: make([]uint64, len(groups)), procs: make([]int, len(groups)), comm: make([]string, len(groups))}
	for i, g := range groups {
		s.comm[i] = all[p.PIDs[i]].comm
		for _, pid := range g {
			s.ticks[i] += all[pid].ticks
		}
		s.procs[i] = len(g)
	}
	return s, nil
}

// cpuBetween turns two samples into seconds per root.
func (p Processes) cpuBetween(a, b cpuSample) []ProcCPU {
	out := make([]ProcCPU, len(p.PIDs))
	for i, pid := range p.PIDs {
		d := float64(int64(b.ticks[i]-a.ticks[i])) / userHZ
		out[i] = ProcCPU{PID: pid, Comm: b.comm[i], Procs: b.procs[i], Seconds: d}
	}
	return out
}

// Memory is the resident memory of the measured processes, in bytes:
// RSS summed over processes (which counts pages shared between the
// processes of a tree once per process) and PSS (each shared page split
// between its sharers), the fairer figure for a forking server. PSS is 0
// where /proc/PID/smaps_rollup is missing (kernels before 4.14).
type Memory struct {
	RSS   int64 `json:"rss_bytes"`
	PSS   int64 `json:"pss_bytes"`
	Procs int   `json:"processes"`
}

func (p Processes) sampleMemory() (Memory, error) {
	groups, _, err := p.groups()
	if err != nil {
		return Memory{}, err
	}
	var m Memory
	for _, g := range groups {
		for _, pid := range g {
			rss, err := statusKB(pid, "VmRSS:")
			if err != nil {
				continue // exited since the scan
			}
			m.RSS += rss << 10
			if pss, err := rollupKB(pid, "Pss:"); err == nil {
				m.PSS += pss << 10
			}
			m.Procs++
		}
	}
	return m, nil
}

// groups returns, for each root, the pids counted for it: the root, and
// with Tree its descendants that no earlier root already claimed.
func (p Processes) groups() ([][]int, map[int]procStat, error) {
	all := make(map[int]procStat)
	if p.Tree {
		ents, err := os.ReadDir("/proc")
		if err != nil {
			return nil, nil, fmt.Errorf("loadtest: read /proc: %w", err)
		}
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if st, err := readStat(pid); err == nil {
				all[pid] = st
			}
		}
	}
	for _, pid := range p.PIDs {
		if _, ok := all[pid]; ok {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			return nil, nil, fmt.Errorf("loadtest: process %d: %w", pid, err)
		}
		all[pid] = st
	}
	children := make(map[int][]int)
	if p.Tree {
		for pid, st := range all {
			children[st.ppid] = append(children[st.ppid], pid)
		}
	}
	seen := make(map[int]bool)
	groups := make([][]int, len(p.PIDs))
	for i, root := range p.PIDs {
		queue := []int{root}
		for len(queue) > 0 {
			pid := queue[0]
			queue = queue[1:]
			if seen[pid] {
				continue
			}
			seen[pid] = true
			groups[i] = append(groups[i], pid)
			queue = append(queue, children[pid]...)
		}
	}
	return groups, all, nil
}

// readStat parses /proc/PID/stat. The command name is in parentheses and
// may itself contain spaces and parentheses, so fields are counted from
// the last ')'.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	open, closing := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return procStat{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	// After "(comm)": state ppid pgrp session tty_nr tpgid flags minflt
	// cminflt majflt cmajflt utime stime cutime cstime ...
	f := strings.Fields(string(b[closing+1:]))
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	st := procStat{pid: pid, comm: string(b[open+1 : closing])}
	st.ppid, _ = strconv.Atoi(f[1])
	for _, i := range []int{11, 12, 13, 14} {
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("/proc/%d/stat field %d: %w", pid, i, err)
		}
		st.ticks += v
	}
	return st, nil
}

func statusKB(pid int, key string) (int64, error) {
	return fieldKB(filepath.Join("/proc", strconv.Itoa(pid), "status"), key)
}

func rollupKB(pid int, key string) (int64, error) {
	return fieldKB(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"), key)
}

// fieldKB reads a "Key:   123 kB" line.
func fieldKB(path, key string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", path, key)
}
