package fleet

import (
	"context"
	"testing"
	"time"
)

// TestHotSessions: with SetHotSessions, a user with few sessions is
// counted without Redis (0: the caller counts its own); once the
// registry holds the threshold, the user is hot on every proxy and
// counted fleet-wide.
func TestHotSessions(t *testing.T) {
	c, _ := redisClient(t)
	ctx := context.Background()
	p1, l1, _ := newFleet(c, "p1", 200*time.Millisecond)
	p2, _, _ := newFleet(c, "p2", 200*time.Millisecond)
	p1.SetHotSessions(3)
	p2.SetHotSessions(3)
	run(t, p1)
	run(t, p2)
	waitFor(t, 2*time.Second, "healthy control channels", func() bool { return p1.Cold() && p2.Cold() })
	for i, id := range []string{"s1", "s2"} {
		s := session(id, "ann", "imap1")
		l1.add(s)
		p1.SessionStarted(s)
		waitFor(t, 2*time.Second, "registration", func() bool { return count(t, c, "ann") == i+1 })
	}
	before := commandCalls(t, c, "zrange")
	for range 50 {
		if n, err := p2.UserSessions(ctx, "ann"); err != nil || n != 0 {
			t.Fatalf("UserSessions of a cold user = %d, %v; want 0 (counted locally)", n, err)
		}
	}
	if n := commandCalls(t, c, "zrange") - before; n != 0 {
		t.Errorf("%d ZRANGE for 50 counts of a cold user, want 0", n)
	}
	s := session("s3", "ann", "imap1")
	l1.add(s)
	p1.SessionStarted(s)
	waitFor(t, 2*time.Second, "the count fleet-wide on p2", func() bool {
		n, err := p2.UserSessions(ctx, "ann")
		return err == nil && n == 3
	})
	if until := p2.hotUntil(HotKey(HotSessions, "ann")); time.Until(until) < HotSessionsFor-time.Minute {
		t.Errorf("hot until %v, want about %v from now", until, HotSessionsFor)
	}
	// Without a threshold, every count reads Redis.
	p2.SetHotSessions(0)
	before = commandCalls(t, c, "zrange")
	if n, err := p2.UserSessions(ctx, "bob"); err != nil || n != 0 {
		t.Fatalf("UserSessions = %d, %v", n, err)
	}
	if commandCalls(t, c, "zrange") == before {
		t.Error("no ZRANGE without a threshold")
	}
}
