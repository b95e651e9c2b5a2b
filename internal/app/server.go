package app

import "github.com/portico-mail/portico/proxy"

// Server returns the proxy server, which lives as long as the process
// (reloads reconfigure it), or nil before Run has built it. It takes p.mu
// only to read the field: callers such as a watchdog then use the server
// without waiting for a reload or an upgrade in progress.
func (p *Process) Server() *proxy.Server {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.app == nil {
		return nil
	}
	return p.app.Server
}
