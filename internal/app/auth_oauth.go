package app

import (
	"log/slog"

	"github.com/portico-mail/portico/auth"
	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/proxy"
)

// buildOAuth builds the authenticator of auth.oauth for XOAUTH2 and
// OAUTHBEARER. Placeholder for the OAuth work, which owns this file; nil
// means tokens are passed to the backend, which decides.
func (rt *App) buildOAuth(cfg *config.Config, master auth.Master, logger *slog.Logger) (proxy.Authenticator, error) {
	return nil, nil
}
