package proxy

import (
	"github.com/emersion/go-imap/v2"

	"github.com/portico-mail/portico/proxy/wire"
)

// NOOP is answered but does not extend the pre-auth deadline: a client
// cannot keep an unauthenticated connection open by sending it.
func (s *session) handleNoop(cmd *wire.Command) action {
	if len(cmd.Args) != 0 {
		return s.badCommand(cmd.Tag, "Unexpected arguments")
	}
	s.writeStatus(cmd.Tag, imap.StatusResponseTypeOK, "", "NOOP completed")
	return actContinue
}
