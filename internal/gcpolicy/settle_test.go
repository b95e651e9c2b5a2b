package gcpolicy

import (
	"context"
	"testing"
	"time"
)

const mib = 1 << 20

// feed steps s through samples like m one Interval apart, each allocating
// alloc bytes more than the one before, and returns the steps that
// collected.
func feed(s *Settler, n int, alloc uint64, m sample) []int {
	var got []int
	m.allocs = s.allocs
	for i := range n {
		m.allocs += alloc
		if s.step(m) {
			got = append(got, i)
		}
	}
	return got
}

func newSettler() *Settler {
	s := &Settler{}
	s.defaults()
	return s
}

// After a burst, a quiet process with much garbage collects once, after
// Quiet, and not again before MinInterval.
func TestSettleAfterBurst(t *testing.T) {
	s := newSettler()
	heavy := sample{objects: 40 * mib, live: 16 * mib, free: 6 * mib, stacks: 5 * mib, goroutines: 20}
	if got := feed(s, 10, 20*mib, heavy); len(got) != 0 {
		t.Fatalf("collected while busy, at steps %v", got)
	}
	// Quiet from now on: the first two quiet samples make Quiet (2s).
	got := feed(s, 40, 1000, heavy)
	if len(got) != 2 || got[0] != 1 || got[1] != 1+30 {
		t.Fatalf("collected at quiet steps %v, want [1 31] (after Quiet, then after MinInterval)", got)
	}
}

// Little excess is not worth a collection: under 4 MiB, or under a
// quarter of the live heap.
func TestSettleNotWorthIt(t *testing.T) {
	for _, m := range []sample{
		{objects: 10 * mib, live: 8 * mib, free: 1 * mib, stacks: 512 << 10, goroutines: 10},        // 3.5 MiB
		{objects: 900 * mib, live: 800 * mib, free: 90 * mib, stacks: 8 * mib, goroutines: 1 << 10}, // 190 MiB < 200 MiB
	} {
		s := newSettler()
		if got := feed(s, 10, 0, m); len(got) != 0 {
			t.Errorf("%+v: collected at steps %v", m, got)
		}
	}
	// The stacks of running goroutines do not count; ended ones' do.
	s := newSettler()
	m := sample{objects: 8 * mib, live: 8 * mib, stacks: 64 * mib, goroutines: 8 << 10}
	if got := feed(s, 10, 0, m); len(got) != 0 {
		t.Errorf("collected for the stacks of running goroutines, at steps %v", got)
	}
	m.goroutines = 100
	if got := feed(s, 10, 0, m); len(got) != 1 {
		t.Errorf("collections for 63 MiB of ended goroutines' stacks: at steps %v, want one", got)
	}
}

// A trickle of allocation under QuietRate is quiet; anything over it
// starts the wait again.
func TestSettleQuietRate(t *testing.T) {
	s := newSettler()
	m := sample{objects: 40 * mib, live: 16 * mib}
	feed(s, 1, 0, m)
	for i := range 10 {
		if s.step(sample{allocs: uint64(i+1) * 2 * mib, objects: m.objects, live: m.live}) {
			t.Fatalf("collected at step %d at 2 MiB/s", i)
		}
	}
	if got := feed(s, 3, 512<<10, m); len(got) != 1 || got[0] != 1 {
		t.Errorf("collected at steps %v at 512 KiB/s, want [1]", got)
	}
}

func TestRunStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s := &Settler{Interval: time.Millisecond, collect: func() {}}
	go func() {
		s.Run(ctx)
		close(done)
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}
