package proxy_test

import (
	"context"
	"testing"
	"time"
)

// TestCounts: the watchdog's check sees the accept loops and the
// logged-in sessions, and no accept loop after Shutdown.
func TestCounts(t *testing.T) {
	h := newHarness(t, nil)
	waitCounts := func(wantServing, wantIn int) {
		t.Helper()
		var serving, in int
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if serving, in = h.srv.Counts(); serving == wantServing && in == wantIn {
				return
			}
		}
		t.Fatalf("Counts() = %d, %d; want %d, %d", serving, in, wantServing, wantIn)
	}
	waitCounts(3, 0) // imaps, imap, imap-clear
	pre := h.dialTLS(t, h.imaps)
	pre.greeting()
	c := h.dialTLS(t, h.imaps)
	c.greeting()
	c.loginAlice("a")
	waitCounts(3, 1) // the client that has not logged in does not count
	c.c.Close()
	waitCounts(3, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h.srv.Shutdown(ctx)
	waitCounts(0, 0)
}
