package auth

import (
	"context"
	"fmt"
	"runtime"
	"sync"
)

// Hashes verifies passwords against stored hashes, for the stores that
// keep hashes (RedisStore). It bounds the verifications running at once,
// since an argon2id check may take 64 MiB and a bcrypt one a CPU for
// tens of milliseconds, and it makes an unknown user cost what a wrong
// password costs: the password is checked against a dummy hash with the
// scheme and cost of the last real hash seen. The zero value is ready to
// use.
type Hashes struct {
	// AllowPlain accepts {PLAIN} entries (passwords in clear).
	AllowPlain bool
	// MaxConcurrent bounds simultaneous verifications; zero means twice
	// the number of CPUs. Logins beyond it wait (within their context).
	MaxConcurrent int

	once sync.Once
	sem  chan struct{}

	mu      sync.Mutex
	dummy   hashScheme            // for unknown users
	dummies map[string]hashScheme // by params, so each is made once
}

// maxDummies bounds the dummy hashes kept, one per scheme and cost seen.
const maxDummies = 16

// defaultDummy is the dummy before any real hash has been seen:
// SHA512-CRYPT with its default rounds, what doveadm pw writes for it.
const defaultDummy = "$6$AAAAAAAAAAAAAAAA$"

// Verify reports whether password matches encoded; an empty encoded is an
// unknown user, checked against the dummy and always false. An error
// wraps ErrHashFormat (the entry is unusable) or the context's error.
func (h *Hashes) Verify(ctx context.Context, encoded, password string) (bool, error) {
	h.once.Do(func() {
		n := h.MaxConcurrent
		if n <= 0 {
			n = 2 * runtime.GOMAXPROCS(0)
		}
		h.sem = make(chan struct{}, n)
	})
	select {
	case h.sem <- struct{}{}:
	case <-ctx.Done():
		return false, fmt.Errorf("auth: waiting to verify a password: %w", ctx.Err())
	}
	defer func() { <-h.sem }()

	if encoded == "" {
		verifyWith(h.dummyScheme(), password)
		return false, nil
	}
	s, err := parseHash(encoded, h.AllowPlain)
	if err != nil {
		return false, err
	}
	ok := verifyWith(s, password)
	h.remember(s)
	return ok, nil
}

func (h *Hashes) dummyScheme() hashScheme {
	h.mu.Lock()
	d := h.dummy
	h.mu.Unlock()
	if d.verify != nil {
		return d
	}
	p, _ := parseShaCrypt(defaultDummy)
	s, _ := shaCryptHash("SHA512-CRYPT", shaCrypt(p, []byte(randomString())).String())
	h.mu.Lock()
	if h.dummy.verify == nil {
		h.dummy = s
	}
	h.mu.Unlock()
	return s
}

// remember makes the dummy follow the scheme and cost of s, making a new
// dummy hash (one hash computation) the first time a cost is seen.
func (h *Hashes) remember(s hashScheme) {
	h.mu.Lock()
	if h.dummy.params == s.params {
		h.mu.Unlock()
		return
	}
	d, ok := h.dummies[s.params]
	h.mu.Unlock()
	if !ok {
		enc, err := s.dummy()
		if err != nil {
			return
		}
		if d, err = parseHash(enc, true); err != nil {
			return
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dummies == nil || len(h.dummies) >= maxDummies {
		h.dummies = make(map[string]hashScheme)
	}
	h.dummies[s.params] = d
	h.dummy = d
}
