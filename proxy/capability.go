package proxy

import (
	"strings"

	"github.com/emersion/go-imap/v2"

	"github.com/portico-mail/portico/proxy/wire"
)

func (s *session) handleCapability(cmd *wire.Command) action {
	if len(cmd.Args) != 0 {
		return s.badCommand(cmd.Tag, "Unexpected arguments")
	}
	s.askedCaps = true
	s.bw.WriteString("* CAPABILITY " + strings.Join(s.caps(), " ") + "\r\n")
	s.writeStatus(cmd.Tag, imap.StatusResponseTypeOK, "", "Capability completed")
	return actContinue
}
