package upstream

import (
	"context"
	"errors"

	"github.com/portico-mail/portico/routing"
)

// LoginPOP3 is Login for POP3: it logs in to b.POP3Addr. Being written
// (issue 13); until then it refuses every login as unavailable.
func LoginPOP3(ctx context.Context, b *routing.Backend, cred Credentials, id *IDInfo) (*Result, error) {
	return nil, errors.New("upstream: POP3 login not written yet")
}
