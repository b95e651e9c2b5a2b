package app

import (
	"log/slog"

	"github.com/portico-mail/portico/auth"
	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/proxy"
)

// buildHTTPAuth builds the authenticator of auth.http, for auth.passwords
// "http". Placeholder for the auth_http work, which owns this file; nil
// means not available.
func (rt *App) buildHTTPAuth(cfg *config.Config, master auth.Master, logger *slog.Logger) (proxy.Authenticator, error) {
	return nil, nil
}
