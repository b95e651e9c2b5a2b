package routing

import (
	"fmt"
	"math"
	"testing"
)

func weightedPool(weights ...int) *Pool {
	p := &Pool{Name: "p", Policy: PolicyAssign}
	for i, w := range weights {
		p.Members = append(p.Members, &Backend{Name: fmt.Sprintf("mx%02d", i+1), Addr: fmt.Sprintf("127.0.0.1:%d", 1000+i), Weight: w})
	}
	return p
}

// TestPoolFairness: 100,000 users over 10 weighted backends land within
// ±5 % (relative) of each backend's weight share.
func TestPoolFairness(t *testing.T) {
	for _, weights := range [][]int{
		{1, 2, 3, 4, 5, 6, 7, 8, 9, 10},
		{1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
		{3, 3, 3, 3, 3, 3, 3, 3, 3, 1}, // one small backend among big ones
	} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			p := weightedPool(weights...)
			const users = 100_000
			count := map[*Backend]int{}
			for i := range users {
				count[p.Pick(fmt.Sprintf("user%d@example.com", i), nil, nil)]++
			}
			total := 0
			for _, w := range weights {
				total += w
			}
			for _, b := range p.Members {
				want := float64(users) * float64(b.Weight) / float64(total)
				got := float64(count[b])
				dev := (got - want) / want
				t.Logf("%s weight %2d: %6d users, expected %8.1f (%+.2f%%)", b.Name, b.Weight, count[b], want, 100*dev)
				if math.Abs(dev) > 0.05 {
					t.Errorf("%s: %d users, want %.0f ±5%%", b.Name, count[b], want)
				}
			}
		})
	}
}

// TestPoolStability: removing a member moves only its own users, and
// adding one only takes users to the new member.
func TestPoolStability(t *testing.T) {
	full := weightedPool(1, 2, 3, 4, 5)
	less := &Pool{Members: full.Members[:4]}
	moved := 0
	for i := range 20_000 {
		u := fmt.Sprintf("u%d", i)
		a, b := full.Pick(u, nil, nil), less.Pick(u, nil, nil)
		if a != b {
			moved++
			if a != full.Members[4] {
				t.Fatalf("%s moved from %s to %s, but %s is still there", u, a.Name, b.Name, a.Name)
			}
		}
	}
	// mx05 has 5/15 of the users.
	if moved < 6000 || moved > 7300 {
		t.Errorf("%d users moved, want about 6667", moved)
	}
}

func TestPoolPickFilters(t *testing.T) {
	p := weightedPool(1, 1, 1)
	if p.Pick("u", nil, func(*Backend) bool { return false }) != nil {
		t.Fatal("no usable member, but Pick chose one")
	}
	first := p.Pick("u", nil, nil)
	second := p.Pick("u", nil, func(b *Backend) bool { return b != first })
	if second == nil || second == first {
		t.Fatalf("skipping %v gave %v", first, second)
	}
	// A weight function overrides Backend.Weight.
	heavy := p.Members[2]
	n := 0
	for i := range 1000 {
		if p.Pick(fmt.Sprint(i), func(b *Backend) int {
			if b == heavy {
				return 1000
			}
			return 0 // counts as 1
		}, nil) == heavy {
			n++
		}
	}
	if n < 980 {
		t.Fatalf("member of weight 1000 against two of weight 1 got %d of 1000 users", n)
	}
	var nilPool *Pool
	if nilPool.Pick("u", nil, nil) != nil {
		t.Fatal("nil pool chose a member")
	}
	if Score("a", "bc", 1) == Score("ab", "c", 1) {
		t.Fatal("user and backend name are not separated in the hash")
	}
}

func TestParsePolicy(t *testing.T) {
	for s, want := range map[string]Policy{"": PolicyReject, "reject": PolicyReject, "assign": PolicyAssign} {
		if got, err := ParsePolicy(s); err != nil || got != want {
			t.Errorf("ParsePolicy(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParsePolicy("random"); err == nil {
		t.Error("ParsePolicy accepted random")
	}
	if PolicyAssign.String() != "assign" {
		t.Error(PolicyAssign.String())
	}
}
