package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// WriteJSON writes the report as one indented JSON object, for scripts.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report as a table for people.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	tlsDesc := string(r.Security)
	if r.Protocol == POP3 {
		tlsDesc = map[Security]string{ImplicitTLS: "pop3s", StartTLS: "stls"}[r.Security]
		if tlsDesc == "" {
			tlsDesc = string(r.Security)
		}
		tlsDesc = "pop3, " + tlsDesc
	}
	if r.TLS != "" {
		tlsDesc += ", " + r.TLS
	}
	fmt.Fprintf(&b, "%s against %s (%s), %s", r.Mode, r.Addr, tlsDesc, plural(r.Workers, "worker"))
	if r.Interrupted {
		b.WriteString(", INTERRUPTED")
	}
	b.WriteString("\n")
	switch r.Mode {
	case Login:
		fmt.Fprintf(&b, "  %d sessions in %.2f s: %.1f sessions/s, %d errors\n", r.Sessions, r.Elapsed, r.Rate, r.Errors)
	case Fetch:
		what := "FETCHes"
		if r.Protocol == POP3 {
			what = "RETRs"
		}
		fmt.Fprintf(&b, "  %d sessions, %d %s in %.2f s: %.1f MiB/s (%.1f MiB), %d errors\n",
			r.Sessions, r.Ops, what, r.Elapsed, r.MiBPerSec, float64(r.Bytes)/(1<<20), r.Errors)
	case Latency:
		fmt.Fprintf(&b, "  %d sessions, %d NOOPs in %.2f s: %.0f NOOPs/s, %d errors\n", r.Sessions, r.Ops, r.Elapsed, r.Rate, r.Errors)
	case Idle:
		fmt.Fprintf(&b, "  %d sessions opened, held in IDLE for %.1f s, %d survived, %d errors\n", r.Sessions, r.Elapsed, r.Survived, r.Errors)
	}

	rows := []struct {
		name string
		l    *Percentiles
	}{{"connect", r.Connect}, {"login", r.Login}, {"session", r.Session}, {opName(r.Mode, r.Protocol), r.Op}}
	header := false
	for _, row := range rows {
		if row.l == nil {
			continue
		}
		if !header {
			fmt.Fprintf(&b, "  %-9s %8s %9s %9s %9s %9s\n", "ms", "n", "p50", "p90", "p99", "max")
			header = true
		}
		fmt.Fprintf(&b, "  %-9s %8d %9.2f %9.2f %9.2f %9.2f\n", row.name, row.l.N, row.l.P50, row.l.P90, row.l.P99, row.l.Max)
	}

	if c := r.CPU; c != nil {
		fmt.Fprintf(&b, "  server CPU %.2f s", c.Seconds)
		switch {
		case c.PerSessionMS > 0:
			fmt.Fprintf(&b, ", %.3f ms per session", c.PerSessionMS)
		case c.PerMiBMS > 0:
			fmt.Fprintf(&b, ", %.2f ms per MiB", c.PerMiBMS)
		case c.PerOpUS > 0:
			fmt.Fprintf(&b, ", %.1f µs per command", c.PerOpUS)
		}
		b.WriteString("\n")
		for _, p := range c.Procs {
			fmt.Fprintf(&b, "    pid %d (%s, %d processes): %.2f s\n", p.PID, p.Comm, p.Procs, p.Seconds)
		}
	}
	if m := r.Memory; m != nil {
		fmt.Fprintf(&b, "  server memory: RSS %s -> %s, %s per session; PSS %s -> %s, %s per session (%d processes)\n",
			size(float64(m.Before.RSS)), size(float64(m.After.RSS)), size(m.RSSPerSession),
			size(float64(m.Before.PSS)), size(float64(m.After.PSS)), size(m.PSSPerSession), m.After.Procs)
	}
	if r.MeasureError != "" {
		fmt.Fprintf(&b, "  measurement failed: %s\n", r.MeasureError)
	}
	for _, k := range slices.Sorted(maps.Keys(r.ErrorKinds)) {
		fmt.Fprintf(&b, "  error %-20s %6d  e.g. %s\n", k, r.ErrorKinds[k], r.ErrorExamples[k])
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func opName(m Mode, p Protocol) string {
	switch {
	case m == Fetch && p == POP3:
		return "retr"
	case m == Fetch:
		return "fetch"
	}
	return "noop"
}

func size(b float64) string {
	switch {
	case b >= 1<<30 || b <= -(1<<30):
		return fmt.Sprintf("%.2f GiB", b/(1<<30))
	case b >= 1<<20 || b <= -(1<<20):
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10 || b <= -(1<<10):
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}
