package loadtest

import (
	"slices"
	"time"
)

// Percentiles summarises one kind of duration, in milliseconds.
type Percentiles struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// summarize sorts d in place. Runs are bounded by count, so keeping every
// sample is cheap and the percentiles are exact (nearest rank).
func summarize(d []time.Duration) *Percentiles {
	if len(d) == 0 {
		return nil
	}
	slices.Sort(d)
	at := func(p float64) float64 {
		i := int(p*float64(len(d))+0.999999) - 1
		i = max(0, min(i, len(d)-1))
		return ms(d[i])
	}
	return &Percentiles{N: len(d), P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: ms(d[len(d)-1])}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// samples is one worker's measurements; workers merge theirs at the end,
// so the hot path takes no lock.
type samples struct {
	connect, login, session, op []time.Duration
	bytes                       int64
	errors                      map[string]int
	example                     map[string]string
}

func (s *samples) fail(err error) {
	if s.errors == nil {
		s.errors, s.example = make(map[string]int), make(map[string]string)
	}
	k := "other"
	if oe, ok := err.(*opError); ok {
		k = oe.kind()
	}
	s.errors[k]++
	if _, ok := s.example[k]; !ok {
		s.example[k] = err.Error()
	}
}

func (s *samples) merge(o *samples) {
	s.connect = append(s.connect, o.connect...)
	s.login = append(s.login, o.login...)
	s.session = append(s.session, o.session...)
	s.op = append(s.op, o.op...)
	s.bytes += o.bytes
	for k, n := range o.errors {
		if s.errors == nil {
			s.errors, s.example = make(map[string]int), make(map[string]string)
		}
		s.errors[k] += n
		if _, ok := s.example[k]; !ok {
			s.example[k] = o.example[k]
		}
	}
}
