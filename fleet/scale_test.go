package fleet

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing"
)

// addSessions gives l n sessions of users named user0, user1…, three
// sessions per user, and returns them.
func addSessions(l *fakeLocal, prefix string, n int) []SessionInfo {
	out := make([]SessionInfo, n)
	for i := range n {
		out[i] = session(fmt.Sprintf("%s-%d", prefix, i), fmt.Sprintf("%s%d", prefix, i/3), "imap1")
		l.add(out[i])
	}
	return out
}

func countAll(t testing.TB, f *Fleet) int {
	t.Helper()
	n, err := CountSessions(context.Background(), f.Client, "", "")
	if err != nil {
		return -1
	}
	return n
}

// TestRedisRestartRestoresInChunks: after an empty Redis comes back, the
// proxy registers a new incarnation and writes its sessions again in
// paced chunks, while sessions keep starting and ending; none of those
// changes is lost and no ended session comes back.
func TestRedisRestartRestoresInChunks(t *testing.T) {
	c, r := redisClient(t)
	const hb = 200 * time.Millisecond
	f, l, _ := newFleet(c, "p1", hb)
	f.WriteRate = 10000
	sessions := addSessions(l, "u", 3000)
	run(t, f)
	waitFor(t, 5*time.Second, "first restore", func() bool { return countAll(t, f) == 3000 })

	r.Stop()
	startRedisOn(t, r.Addr)
	// Changes right after the restart, during the restore.
	for i := range 100 {
		s := session(fmt.Sprintf("new-%d", i), "newcomer", "imap2")
		l.add(s)
		f.SessionStarted(s)
		old := sessions[i*3]
		l.remove(old.ID)
		f.SessionEnded(old)
	}
	waitFor(t, 10*time.Second, "restore after the restart", func() bool {
		return countAll(t, f) == 3000 && count(t, c, "newcomer") == 100
	})
	for i := range 100 {
		if n := count(t, c, sessions[i*3].User); n != 2 {
			t.Fatalf("%s has %d sessions, want 2 (one ended)", sessions[i*3].User, n)
		}
	}
	st := f.Stats()
	if st.Incarnations != 2 || st.Dropped != 0 || st.Restoring {
		t.Errorf("Stats = %+v, want 2 incarnations, nothing dropped, restore over", st)
	}
}

// TestSlowRedis: a Redis that stops answering for longer than a write's
// deadline but less than three heartbeats. Changes queue (bounded) and
// are all written once it answers again; the proxy keeps its incarnation
// and never counts a drop.
func TestSlowRedis(t *testing.T) {
	c, r := redisClient(t)
	const hb = time.Second
	f, l, _ := newFleet(c, "p1", hb)
	sessions := addSessions(l, "s", 300)
	run(t, f)
	waitFor(t, 5*time.Second, "registration", func() bool { return countAll(t, f) == 300 })

	if err := syscall.Kill(r.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			syscall.Kill(r.Pid(), syscall.SIGCONT)
			resumed = true
		}
	}
	defer resume()
	for i := range 200 {
		start := time.Now()
		s := session(fmt.Sprintf("late-%d", i), fmt.Sprintf("late%d", i%10), "imap1")
		l.add(s)
		f.SessionStarted(s)
		if i < 100 {
			l.remove(sessions[i].ID)
			f.SessionEnded(sessions[i])
		}
		if d := time.Since(start); d > 10*time.Millisecond {
			t.Fatalf("a session change took %v while Redis was paused", d)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	if st := f.Stats(); st.Pending != 300 {
		t.Errorf("%d changes pending while Redis is paused, want 300", st.Pending)
	}
	resume()
	waitFor(t, 5*time.Second, "catch-up", func() bool { return countAll(t, f) == 400 && f.Stats().Pending == 0 })
	for u := range 10 {
		if n := count(t, c, fmt.Sprintf("late%d", u)); n != 20 {
			t.Errorf("late%d has %d sessions, want 20", u, n)
		}
	}
	if st := f.Stats(); st.Incarnations != 1 || st.Dropped != 0 {
		t.Errorf("Stats = %+v, want one incarnation and nothing dropped", st)
	}
}

// TestMoveDuringChurn: a move counts the moving user's sessions right
// while 10,000 sessions of other users start and end around it.
func TestMoveDuringChurn(t *testing.T) {
	c, _ := redisClient(t)
	ctx := context.Background()
	routes := &routing.Redis{Client: c}
	if err := routes.SetRoute(ctx, "mover", routing.Record{Backend: "imap1"}); err != nil {
		t.Fatal(err)
	}
	a, la, _ := newFleet(c, "a", time.Second)
	la.endOnKick, la.endDelay = true, 200*time.Millisecond
	others := addSessions(la, "o", 10000)
	for i := range 2 {
		la.add(session(fmt.Sprintf("m%d", i), "mover", "imap1"))
	}
	run(t, a)
	waitFor(t, 10*time.Second, "registration", func() bool { return countAll(t, a) == 10002 })

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			k := rng.IntN(len(others))
			la.remove(others[k].ID)
			a.SessionEnded(others[k])
			others[k] = session(fmt.Sprintf("churn-%d", i), others[k].User, "imap1")
			la.add(others[k])
			a.SessionStarted(others[k])
		}
	})
	err := Move(ctx, c, "", routes, "mover", "imap2", MoveOptions{Hold: 5 * time.Second})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("Move: %v", err)
	}
	if n := count(t, c, "mover"); n != 0 {
		t.Errorf("mover has %d sessions after the move", n)
	}
	waitFor(t, 5*time.Second, "churn written", func() bool { return countAll(t, a) == 10000 && a.Stats().Pending == 0 })
}

// TestUserSessionsSeesNewProxy: a proxy counts the sessions of a proxy
// that started after its own last heartbeat.
func TestUserSessionsSeesNewProxy(t *testing.T) {
	c, _ := redisClient(t)
	ctx := context.Background()
	a, _, _ := newFleet(c, "a", time.Minute)
	run(t, a)
	waitFor(t, 2*time.Second, "a's first heartbeat", func() bool { return a.Stats().Heartbeats > 0 })
	if n, err := a.UserSessions(ctx, "uma"); err != nil || n != 0 {
		t.Fatalf("UserSessions = %d, %v; want 0", n, err)
	}
	b, lb, _ := newFleet(c, "b", time.Minute)
	s := session("u1", "uma", "imap1")
	lb.add(s)
	run(t, b)
	waitFor(t, 2*time.Second, "b's registration", func() bool { return count(t, c, "uma") == 1 })
	if n, err := a.UserSessions(ctx, "uma"); err != nil || n != 1 {
		t.Errorf("UserSessions on a = %d, %v; want 1 (b started after a's heartbeat)", n, err)
	}
}

// TestQueueUserSessions: the count rides on a pipeline of the caller's,
// next to its own commands, and agrees with UserSessions.
func TestQueueUserSessions(t *testing.T) {
	c, _ := redisClient(t)
	ctx := context.Background()
	a, la, _ := newFleet(c, "a", time.Minute)
	la.add(session("q1", "quinn", "imap1"))
	la.add(session("q2", "quinn", "imap2"))
	run(t, a)
	waitFor(t, 2*time.Second, "a's sessions", func() bool { return count(t, c, "quinn") == 2 && a.Stats().Heartbeats > 0 })
	pipe := c.Pipeline()
	other := pipe.Echo(ctx, "the caller's own command")
	n := a.QueueUserSessions(pipe, "quinn")
	if pipe.Len() != 2 {
		t.Fatalf("pipeline holds %d commands, want 2", pipe.Len())
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := n(ctx); err != nil || got != 2 {
		t.Fatalf("count = %d, %v; want 2", got, err)
	}
	if other.Val() != "the caller's own command" {
		t.Fatalf("caller's command: %q", other.Val())
	}
	if got, err := a.UserSessions(ctx, "quinn"); err != nil || got != 2 {
		t.Fatalf("UserSessions = %d, %v; want 2", got, err)
	}
}
