package proxy

import (
	"github.com/emersion/go-imap/v2"

	"github.com/portico-mail/portico/proxy/wire"
)

// LOGOUT: RFC 3501 §6.1.3 wants the BYE before the tagged OK.
func (s *session) handleLogout(cmd *wire.Command) action {
	if len(cmd.Args) != 0 {
		return s.badCommand(cmd.Tag, "Unexpected arguments")
	}
	s.writeStatus("*", imap.StatusResponseTypeBye, "", "Logging out")
	s.writeStatus(cmd.Tag, imap.StatusResponseTypeOK, "", "Logout completed")
	s.outcome = "logout before login"
	return actClose
}
