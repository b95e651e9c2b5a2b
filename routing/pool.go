package routing

import (
	"errors"
	"math"
)

// Policy says what happens to a user that has no route record but whose
// domain maps to a pool.
type Policy int

const (
	// PolicyReject answers ErrNotFound, exactly like an unknown user.
	PolicyReject Policy = iota
	// PolicyAssign picks a member by weighted rendezvous hashing and
	// writes it into the user's route record, first writer wins.
	PolicyAssign
)

func (p Policy) String() string {
	switch p {
	case PolicyReject:
		return "reject"
	case PolicyAssign:
		return "assign"
	}
	return "unknown"
}

// ParsePolicy parses the spelling used in the config file.
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "", "reject":
		return PolicyReject, nil
	case "assign":
		return PolicyAssign, nil
	}
	return 0, errors.New(`routing: pool policy must be "reject" or "assign"`)
}

// Pool is a named group of backends. A route record naming the pool sends
// the user to a member chosen by hashing the user name, on every lookup;
// a pool with PolicyAssign also receives users that have no record at all,
// and the chosen member is then written into their record for good.
// Pools are shared and must not be modified once handed to a Router.
type Pool struct {
	Name    string
	Members []*Backend
	Policy  Policy
}

// Pick returns the member with the highest weighted rendezvous score for
// user among those usable says yes to, or nil if there is none. weight
// gives a member's weight (values below 1 count as 1); nil means
// Backend.Weight. usable nil means every member.
//
// Rendezvous hashing keeps users in place when the pool changes: adding a
// member only takes users from the others in proportion to its weight, and
// removing one only moves the users it had.
func (p *Pool) Pick(user string, weight func(*Backend) int, usable func(*Backend) bool) *Backend {
	if p == nil {
		return nil
	}
	var best *Backend
	bestScore := math.Inf(-1)
	for _, b := range p.Members {
		if b == nil || (usable != nil && !usable(b)) {
			continue
		}
		w := b.weight()
		if weight != nil {
			w = max(weight(b), 1)
		}
		// Ties (practically impossible) go to the first member, so that
		// every proxy with the same config agrees.
		if s := Score(user, b.key(), w); s > bestScore {
			best, bestScore = b, s
		}
	}
	return best
}

// Score is the weighted rendezvous score of user on the backend called
// name: -weight/ln(u), with u uniform in (0,1) derived from a 64-bit hash
// of the pair. The member with the highest score wins, which gives each
// member a share of users exactly proportional to its weight.
func Score(user, name string, weight int) float64 {
	h := hash64(user, name)
	// The top 53 bits fill a float64 mantissa; +0.5 keeps u off 0 and 1,
	// where ln(u) would be -Inf or 0.
	u := (float64(h>>11) + 0.5) / (1 << 53)
	return -float64(max(weight, 1)) / math.Log(u)
}

// hash64 is FNV-1a over user, a separator and name, finished with the
// splitmix64 mixer: FNV alone leaves the high bits, which Score uses,
// poorly mixed for inputs that differ only at the end.
func hash64(user, name string) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for i := 0; i < len(user); i++ {
		h = (h ^ uint64(user[i])) * prime
	}
	// 0xff never occurs in UTF-8, so ("ab","c") and ("a","bc") differ.
	h = (h ^ 0xff) * prime
	for i := 0; i < len(name); i++ {
		h = (h ^ uint64(name[i])) * prime
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
