package routing

import "fmt"

// Explanation is the decision path of one lookup, from Redis.Explain, for
// `portico route explain`.
type Explanation struct {
	User string
	// Steps are one-line descriptions in order: cache, Redis record, pool
	// and policy, candidates with scores, health and drain of the backend,
	// fallback.
	Steps []string
	// Candidates are the members of the pool consulted, if any, best score
	// first.
	Candidates []Candidate
	// Backend and Err are what Lookup would return now. When the user has
	// no route and would be assigned, Backend is the member that would be
	// written, unless another proxy writes first.
	Backend *Backend
	Err     error
}

// Candidate is one pool member as seen by a lookup.
type Candidate struct {
	Backend *Backend
	Weight  int     // effective weight (fleet override or configured)
	Score   float64 // weighted rendezvous score; the highest usable one wins
	Up      bool    // per Health
	Drained bool    // per Fleet
	Chosen  bool
}

func (c Candidate) String() string {
	s := fmt.Sprintf("%s weight=%d score=%.6g", c.Backend, c.Weight, c.Score)
	if !c.Up {
		s += " down"
	}
	if c.Drained {
		s += " drained"
	}
	if c.Chosen {
		s += " chosen"
	}
	return s
}

// add records a step; it does nothing on a nil Explanation, so that
// Lookup can share Explain's code at no cost.
func (ex *Explanation) add(format string, args ...any) {
	if ex != nil {
		ex.Steps = append(ex.Steps, fmt.Sprintf(format, args...))
	}
}
