package proxy

import (
	"testing"

	"github.com/portico-mail/portico/routing"
)

// BenchmarkStats measures a scrape's walk over 100,000 connections, nine
// in ten of them logged in.
func BenchmarkStats(b *testing.B) {
	s := &Server{}
	s.init()
	ln := &Listener{Name: "imaps"}
	be := &routing.Backend{Name: "imap1"}
	for i := range 100_000 {
		sess := &session{srv: s, ln: ln, backend: be, sp: &splicer{}}
		if i%10 != 0 {
			sess.reg = regSpliced
		}
		s.sessions[sess] = struct{}{}
		s.conns[ln]++
		if sess.reg == regSpliced {
			s.spliced[sess] = struct{}{}
		}
	}
	b.ResetTimer()
	for b.Loop() {
		st := s.Stats()
		if st.Listeners[0].Preauth != 10_000 {
			b.Fatalf("stats = %+v", st.Listeners)
		}
	}
}
