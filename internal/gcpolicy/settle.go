// Package gcpolicy is the garbage-collection policy of a Portico process,
// which spends most of its life holding thousands of idle sessions.
//
// Go collects when the heap has grown by GOGC percent (100 by default)
// since the last collection, and otherwise only every two minutes. After a
// burst of logins (a restart, a reconnect storm, the morning), the heap
// holds the garbage of those logins and the stacks of their finished
// goroutines, up to as much again as the sessions themselves, and nothing
// collects it while the sessions sit in IDLE: the process's RSS stays at
// the burst's peak for up to two minutes, which is what an operator's
// monitoring sees.
//
// A Settler closes that gap: once the process has been quiet for a moment
// and holds much more memory than its live heap needs, it collects and
// returns the freed pages to the system at once (debug.FreeOSMemory: the
// runtime's own scavenger would keep most of them for a heap goal sized to
// the burst). It collects twice, so that the buffers the burst left in
// sync.Pools go too (a pool keeps them for one collection). It costs two
// collections per burst, never more than once per MinInterval, and
// nothing while the process is busy: then Go's own pacing (GOGC,
// GOMEMLIMIT, both left to the operator) is in charge.
package gcpolicy

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Settler decides when a quiet process collects. The zero value uses the
// defaults below.
type Settler struct {
	// Interval is how often allocation is sampled (1s).
	Interval time.Duration
	// Quiet is how long the process must allocate less than QuietRate
	// before it counts as settled (2s).
	Quiet time.Duration
	// QuietRate is the allocation rate, in bytes per second, under which
	// the process counts as quiet (1 MiB/s: about twenty logins a second).
	QuietRate uint64
	// MinExcess is the least memory beyond what the live heap needs that is
	// worth a collection (4 MiB); a quarter of the live heap if that is
	// more. Excess is garbage, free heap pages not yet returned, and the
	// stacks of goroutines that have ended.
	MinExcess uint64
	// MinInterval is the shortest time between two settle collections
	// (30s), which bounds their cost for a process whose bursts come and go.
	MinInterval time.Duration

	collect func() // settle; tests replace it

	// State, from the samples so far.
	allocs    uint64        // cumulative heap allocation, bytes
	quietFor  time.Duration // how long allocation has been under QuietRate
	sinceLast time.Duration // since the last settle collection
	started   bool
}

func (s *Settler) defaults() {
	if s.Interval <= 0 {
		s.Interval = time.Second
	}
	if s.Quiet <= 0 {
		s.Quiet = 2 * time.Second
	}
	if s.QuietRate == 0 {
		s.QuietRate = 1 << 20
	}
	if s.MinExcess == 0 {
		s.MinExcess = 4 << 20
	}
	if s.MinInterval <= 0 {
		s.MinInterval = 30 * time.Second
	}
	if s.collect == nil {
		s.collect = settle
	}
}

// settle collects twice, the second time returning every free page: the
// first collection moves what sync.Pools hold to their victim caches, the
// second frees it.
func settle() {
	runtime.GC()
	debug.FreeOSMemory()
}

// Run samples the runtime's metrics every Interval until ctx is done and
// collects when the process has settled.
func (s *Settler) Run(ctx context.Context) {
	s.defaults()
	samples := make([]metrics.Sample, len(sampleNames))
	for i, n := range sampleNames {
		samples[i].Name = n
	}
	t := time.NewTicker(s.Interval)
	defer t.Stop()
	for {
		metrics.Read(samples)
		var m sample
		for i, p := range []*uint64{&m.allocs, &m.objects, &m.live, &m.free, &m.stacks, &m.goroutines} {
			if samples[i].Value.Kind() == metrics.KindUint64 {
				*p = samples[i].Value.Uint64()
			}
		}
		if s.step(m) {
			s.collect()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

var sampleNames = []string{
	"/gc/heap/allocs:bytes",
	"/memory/classes/heap/objects:bytes",
	"/gc/heap/live:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/stacks:bytes",
	"/sched/goroutines:goroutines",
}

// sample is one reading of the runtime's metrics, in bytes.
type sample struct {
	allocs     uint64 // allocated since the start
	objects    uint64 // heap objects now, live or not
	live       uint64 // live heap after the last collection
	free       uint64 // free heap pages not returned to the system
	stacks     uint64 // stack memory, in use or cached
	goroutines uint64 // (a count)
}

// liveStack is what a goroutine's stack is assumed to take, to tell the
// stacks of running goroutines from those of ended ones.
const liveStack = 8 << 10

// step takes one sample and reports whether to collect now.
func (s *Settler) step(m sample) bool {
	if !s.started {
		s.started = true
		s.allocs = m.allocs
		s.sinceLast = s.MinInterval // a fresh process may settle at once
		return false
	}
	delta := m.allocs - s.allocs
	s.allocs = m.allocs
	s.sinceLast += s.Interval
	if delta*uint64(time.Second) <= s.QuietRate*uint64(s.Interval) {
		s.quietFor += s.Interval
	} else {
		s.quietFor = 0
	}
	excess := m.free
	if m.objects > m.live {
		excess += m.objects - m.live // garbage, at most
	}
	if ls := m.goroutines * liveStack; m.stacks > ls {
		excess += m.stacks - ls
	}
	if s.quietFor < s.Quiet || s.sinceLast < s.MinInterval || excess < max(s.MinExcess, m.live/4) {
		return false
	}
	s.quietFor = 0
	s.sinceLast = 0
	return true
}
