package routing

import (
	"context"
	"strings"
)

// Static is a fixed table of routes, typically from the config file. The
// zero value has no routes.
type Static struct {
	routes map[string]*Backend
}

// NewStatic returns a router for routes, keyed by user name. Keys should be
// the output of Normalize; they are lower-cased here in case they are not.
// The map is copied, the backends are not.
func NewStatic(routes map[string]*Backend) *Static {
	m := make(map[string]*Backend, len(routes))
	for u, b := range routes {
		if b != nil {
			m[strings.ToLower(u)] = b
		}
	}
	return &Static{routes: m}
}

// Lookup returns the backend for user, or ErrNotFound.
func (s *Static) Lookup(_ context.Context, user string) (*Backend, error) {
	if s != nil {
		// ToLower does not allocate for a name that is already lower case.
		if b, ok := s.routes[strings.ToLower(user)]; ok {
			return b, nil
		}
	}
	return nil, ErrNotFound
}

// Len reports the number of routes.
func (s *Static) Len() int {
	if s == nil {
		return 0
	}
	return len(s.routes)
}
