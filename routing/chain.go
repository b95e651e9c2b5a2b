package routing

import (
	"context"
	"errors"
	"fmt"
)

// Chain asks each router in turn, for example static routes before Redis.
// A router that answers ErrNotFound passes the question on; any other error
// stops the chain, because answering from a later router while an earlier
// one is down could send the user to the wrong mailbox. Nil entries are
// skipped, and an empty Chain finds nothing.
type Chain []Router

// Lookup returns the first backend found, ErrNotFound if no router has one,
// or the first failure.
func (c Chain) Lookup(ctx context.Context, user string) (*Backend, error) {
	for i, r := range c {
		if r == nil {
			continue
		}
		b, err := r.Lookup(ctx, user)
		switch {
		case err == nil && b != nil:
			return b, nil
		case err == nil, errors.Is(err, ErrNotFound):
			// A (nil, nil) answer is a broken router; treat it as a miss
			// rather than hand the proxy a nil backend.
			continue
		default:
			return nil, fmt.Errorf("routing: chain router %d: %w", i, err)
		}
	}
	return nil, ErrNotFound
}
