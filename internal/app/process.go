package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/proxy"
)

// Process runs Portico from its config file for the life of the process:
// it serves, reloads the file on request (Reload), hands its listening
// sockets to a new binary on request (Upgrade) and shuts down when Run's
// context ends.
//
// After an upgrade the old process stops accepting, answers its clients
// that have not logged in with `* BYE`, keeps its spliced sessions until
// they end or until limits.upgrade_timeout, then ends the rest spread over
// limits.upgrade_window, and Run returns. No connection attempt is refused
// meanwhile: the listening sockets are shared by both processes, never
// closed between them.
type Process struct {
	// ConfigPath is the config file; every reload reads it again.
	ConfigPath string
	// Version is logged at start, so that the log shows which binary
	// took over at an upgrade.
	Version string
	// Log receives the log; nil means os.Stderr. A new process started by
	// Upgrade logs to this process's standard error.
	Log io.Writer
	// Hooks tell a service manager what the process is doing; any may be
	// nil.
	Hooks Hooks

	// Logger is set by Run once the config is loaded (read it after Run
	// has started serving, e.g. in Hooks.Ready); it follows reloads of
	// log.level.
	Logger *slog.Logger
	// Ops are the metrics and the admin listener, set by Run before the
	// client listeners open; every App a reload builds is attached.
	Ops *Ops

	// mu serialises Run's start, Reload and Upgrade, and guards what
	// follows.
	mu        sync.Mutex
	app       *App
	level     slog.LevelVar
	runCtx    context.Context    // Run's: ends at SIGTERM
	procCtx   context.Context    // until Run returns: process-wide goroutines
	stopGen   context.CancelFunc // the current App's reloads and checks
	listeners map[string]*served // by address
	handedOn  chan struct{}      // closed when a new process has taken over
	serveErr  chan error         // a listener that failed by itself
	status    statusFile
}

// Hooks are called as the process changes state, from the goroutine that
// changes it; they must not block for long. They are meant for sd_notify:
// READY=1, RELOADING=1, STOPPING=1 and MAINPID. Reloading and Reloaded run
// while the Process holds its lock (a reload is one step): they must not
// call the Process's methods, Server included. Ready and Stopping may.
type Hooks struct {
	// Ready: every listener serves. upgraded is true in a process started
	// by an upgrade, which has become the service's main process.
	Ready func(upgraded bool)
	// Reloading: a reload begins; Reloaded(err) when it has ended, err nil
	// when the new configuration is in service, else why the old one stays.
	Reloading func()
	Reloaded  func(err error)
	// Stopping: the process stops serving, because Run's context ended
	// (handedOn false) or because a new process has taken over (handedOn
	// true). In the latter case the process lives on until its sessions
	// have ended.
	Stopping func(handedOn bool)
}

// served is one client listener and the goroutine serving it.
type served struct {
	spec    Listener
	ln      net.Listener
	done    chan struct{} // closed when Serve returned
	closing atomic.Bool   // closed on purpose: Serve's error is expected
}

// Run serves until ctx ends (then it shuts down within
// limits.shutdown_timeout) or until a new process has taken over and the
// sessions left here have ended.
func (p *Process) Run(ctx context.Context) error {
	w := p.Log
	if w == nil {
		w = os.Stderr
	}
	cfg, err := config.Load(p.ConfigPath)
	if err != nil {
		return err
	}
	p.level.Set(cfg.Log.SlogLevel())
	logger := newLogger(cfg.Log, w, &p.level)
	p.mu.Lock()
	p.Logger = logger
	p.mu.Unlock()
	logger.Info("portico starting", "version", p.Version, "pid", os.Getpid(), "config", p.ConfigPath)
	for _, warn := range cfg.Warnings() {
		logger.Warn("config: " + warn)
	}
	socks, ready, err := inherit()
	if err != nil {
		return err
	}
	defer ready.Close() // nil-safe; signalReady closed it on success
	rt, err := build(cfg, logger, nil)
	if err != nil {
		return err
	}
	rt.sockets = socks
	serving := false
	defer func() {
		if !serving { // a start that failed half-way
			rt.Server.Close()
			rt.Close()
		}
	}()

	procCtx, stopProc := context.WithCancel(context.WithoutCancel(ctx))
	defer stopProc()
	// The admin listener lives until a new process has taken it over, or
	// to the end.
	opsCtx, stopOps := context.WithCancel(procCtx)
	defer stopOps()
	ops, err := startOps(opsCtx, cfg.Admin, p.Version, logger, socks)
	if err != nil {
		return err
	}
	ops.Attach(rt)
	if rt.Store != nil {
		for _, c := range rt.Store.Certificates() {
			logger.Info("certificate loaded", "cert", c)
		}
	}

	p.mu.Lock()
	p.Ops = ops
	p.runCtx = ctx
	p.procCtx = procCtx
	p.app = rt
	p.listeners = make(map[string]*served)
	p.handedOn = make(chan struct{})
	p.serveErr = make(chan error, 1)
	p.status = statusFile{path: statusPath(cfg.PIDFile), config: absPath(p.ConfigPath)}
	// Certificates first: ACME issuance happens before any listener opens.
	if rt.ACME != nil {
		if err := rt.startACME(procCtx, logger); err != nil {
			p.mu.Unlock()
			return err
		}
	}
	if rt.fleet != nil {
		go rt.fleet.Run(procCtx)
	}
	p.startGeneration(rt)
	err = p.openListeners(ctx, rt.Listeners, nil)
	if err == nil {
		for _, addr := range socks.closeInherited() {
			logger.Warn("socket from systemd closed: no listener, admin or ACME address is bound there", "addr", addr)
		}
		err = writePIDFile(cfg.PIDFile)
	}
	if err != nil {
		p.stopGen()
		p.mu.Unlock()
		return err
	}
	p.status.write("start", nil)
	serving = true
	p.mu.Unlock()
	defer removePIDFile(cfg.PIDFile)

	if err := signalReady(ready); err != nil {
		logger.Warn("upgrade", "err", err)
	}
	if ready != nil {
		logger.Info("upgrade: serving; the old process stops accepting", "pid", os.Getpid())
	}
	if f := p.Hooks.Ready; f != nil {
		f(ready != nil)
	}

	select {
	case <-ctx.Done():
		err = nil
	case err = <-p.serveErr:
		logger.Error("listener failed; shutting down", "err", err)
	case <-p.handedOn:
		if f := p.Hooks.Stopping; f != nil {
			f(true)
		}
		stopOps() // the new process answers scrapes now
		p.drain(ctx)
		p.retire(stopProc)
		return nil
	}
	if f := p.Hooks.Stopping; f != nil {
		f(false)
	}
	p.mu.Lock()
	timeout := p.app.cfg.Limits.ShutdownTimeout
	srv := p.app.Server
	p.mu.Unlock()
	logger.Info("shutting down", "timeout", timeout)
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil && !errors.Is(serr, context.DeadlineExceeded) {
		logger.Warn("shutdown", "err", serr)
	}
	// Shutdown closed the listeners: their Serve calls return.
	p.mu.Lock()
	var listening []chan struct{}
	for _, s := range p.listeners {
		listening = append(listening, s.done)
	}
	p.mu.Unlock()
	for _, done := range listening {
		<-done
	}
	p.retire(stopProc)
	return err
}

// retire ends the process-wide goroutines and takes the instance out of
// the fleet registry: the sessions are gone, say so now rather than three
// heartbeats later.
func (p *Process) retire(stopProc context.CancelFunc) {
	p.mu.Lock()
	rt := p.app
	if p.stopGen != nil {
		p.stopGen()
	}
	p.mu.Unlock()
	stopProc()
	if rt.fleet != nil {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := rt.fleet.Retire(rctx); err != nil {
			p.Logger.Warn("shutdown: session registry", "err", err)
		}
	}
	rt.Close()
}

// startGeneration runs rt's certificate reloads, ticket keys, health
// checks and invalidation until the next reload. p.mu is held.
func (p *Process) startGeneration(rt *App) {
	gctx, cancel := context.WithCancel(p.procCtx)
	rt.certReload = rt.startCertReloads(gctx, p.Logger)
	rt.startRoutingChecks(gctx, p.Logger)
	p.stopGen = cancel
}

// openListeners opens the listeners of specs that are not open yet (all
// or none) and serves them; those in keep are already open. p.mu is held.
func (p *Process) openListeners(ctx context.Context, specs []Listener, keep map[string]bool) error {
	var opened []*served
	for _, spec := range specs {
		if keep[spec.Addr] {
			continue
		}
		ln, from, err := p.app.sockets.listen(ctx, clientKey(spec.Addr), func(ctx context.Context) (net.Listener, error) {
			return proxy.Listen(ctx, spec.Addr)
		})
		if err != nil {
			for _, s := range opened {
				p.app.sockets.closed(clientKey(s.spec.Addr))
				s.ln.Close()
			}
			return fmt.Errorf("listener %q: %w", spec.Config.Name, err)
		}
		how := "listening"
		if from != fromOpen {
			how = "listening (" + from + ")"
		}
		p.Logger.Info(how, "listener", spec.Config.Name, "mode", spec.Config.Mode.String(), "addr", ln.Addr().String())
		opened = append(opened, &served{spec: spec, ln: ln, done: make(chan struct{})})
	}
	for _, s := range opened {
		p.listeners[s.spec.Addr] = s
		go p.serve(s)
	}
	return nil
}

// serve runs one listener; its Server.Serve owns s.ln.
func (p *Process) serve(s *served) {
	defer close(s.done)
	err := p.app.Server.Serve(s.ln, s.spec.Config)
	if s.closing.Load() || errors.Is(err, proxy.ErrServerClosed) {
		return
	}
	select {
	case p.serveErr <- err:
	default:
	}
}

// closeListener stops accepting on s; the socket lives on in a process
// that inherited it. p.mu is held.
func (p *Process) closeListener(s *served) {
	s.closing.Store(true)
	p.app.sockets.closed(clientKey(s.spec.Addr))
	s.ln.Close()
	delete(p.listeners, s.spec.Addr)
}

// Reload reads the config file again and, if it is valid, puts it in
// service; otherwise the running configuration stays and the error says
// why. Reload is safe to call at any time, from any goroutine.
func (p *Process) Reload() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.app == nil {
		return errors.New("reload: not serving yet")
	}
	if f := p.Hooks.Reloading; f != nil {
		f()
	}
	err := p.reload()
	if err != nil {
		err = fmt.Errorf("reload refused, the running configuration stays: %w", err)
		p.Logger.Error(err.Error())
	}
	p.status.write("reload", err)
	if f := p.Hooks.Reloaded; f != nil {
		f(err)
	}
	return err
}

func (p *Process) reload() error {
	select {
	case <-p.handedOn:
		return errors.New("this process has handed over to a new one: reload that one")
	default:
	}
	old := p.app
	cfg, err := config.Load(p.ConfigPath)
	if err != nil {
		return err
	}
	for _, warn := range cfg.Warnings() {
		p.Logger.Warn("config: " + warn)
	}
	next, err := old.Next(cfg, p.Logger)
	if err != nil {
		return err
	}
	// Sockets first: a reload that cannot open a new listener changes
	// nothing.
	keep := make(map[string]bool)
	for _, spec := range next.Listeners {
		if p.listeners[spec.Addr] != nil {
			keep[spec.Addr] = true
		}
	}
	if err := p.openListeners(p.procCtx, next.Listeners, keep); err != nil {
		return err
	}
	for _, key := range restartNeeded(old.cfg, cfg) {
		p.Logger.Warn("reload: "+key+" changed; it takes effect only at a restart or an upgrade (portico upgrade)", "key", key)
	}
	stopOld := p.stopGen
	p.startGeneration(next)
	old.Server.Reconfigure(next.settings)
	if next.acmeHostnames != nil {
		p.applyACMEHostnames(next)
	}
	p.level.Set(cfg.Log.SlogLevel())
	wanted := make(map[string]bool)
	for _, spec := range next.Listeners {
		wanted[spec.Addr] = true
		if s := p.listeners[spec.Addr]; keep[spec.Addr] {
			s.spec = spec
			old.Server.UpdateListener(s.ln, spec.Config)
		}
	}
	for addr, s := range p.listeners {
		if !wanted[addr] {
			p.Logger.Info("listener closed by reload", "listener", s.spec.Config.Name, "addr", addr)
			p.closeListener(s)
		}
	}
	// Sessions accepted before keep the old router; its health states
	// and cache, when not shared with the new one, stop changing now.
	stopOld()
	if a := old.authHTTP; a != nil {
		// Its idle connections only; a login still under way in an old
		// session finishes (and may dial again).
		a.Close()
	}
	p.app = next
	p.Ops.Attach(next)
	var names []string
	for _, b := range next.backends {
		names = append(names, b.Name)
	}
	p.Logger.Info("configuration reloaded", "config", p.ConfigPath, "listeners", len(next.Listeners), "backends", strings.Join(names, ","))
	return nil
}

// applyACMEHostnames puts a reload's tls.acme.hostnames in service and
// obtains the certificates of the names added in the background: the
// first handshake for such a name before that ends waits for it (at most
// five minutes), as at start.
func (p *Process) applyACMEHostnames(next *App) {
	added := next.acmeHostnames()
	p.Logger.Info("acme: hostnames reloaded", "hostnames", strings.Join(next.ACME.Hostnames(), ","), "added", strings.Join(added, ","))
	if len(added) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(p.procCtx, 10*time.Minute)
	go func() {
		defer cancel()
		if err := next.ACME.Obtain(ctx, added...); err != nil {
			p.Logger.Error("acme: obtaining certificates after a reload", "hostnames", strings.Join(added, ","), "err", err)
		}
	}()
}

// ReloadCertificates reloads the certificate files only, as SIGHUP did
// before whole-config reloads.
func (p *Process) ReloadCertificates() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.app != nil && p.app.certReload != nil {
		p.app.certReload()
	}
}

// drain is the end of a process that has handed over: stop accepting, BYE
// to the clients not logged in, then wait for the spliced sessions until
// limits.upgrade_timeout, end the rest spread over limits.upgrade_window,
// and close whatever is left after that. ctx ending (SIGTERM) cuts the
// wait to limits.shutdown_timeout.
func (p *Process) drain(ctx context.Context) {
	p.mu.Lock()
	rt := p.app
	lim := rt.cfg.Limits
	var waits []chan struct{}
	for _, s := range p.listeners {
		waits = append(waits, s.done)
		p.closeListener(s)
	}
	if rt.stopChallenges != nil {
		rt.stopChallenges()
	}
	p.mu.Unlock()
	// Every connection accepted so far is a session now, and the new
	// process accepts the others: none is closed unanswered.
	for _, w := range waits {
		<-w
	}
	srv := rt.Server
	n := len(srv.Sessions())
	p.Logger.Info("upgrade: handed over; waiting for the sessions left here", "sessions", n, "upgrade_timeout", lim.UpgradeTimeout)

	sctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		srv.Shutdown(sctx)
		close(done)
	}()
	deadline := time.NewTimer(lim.UpgradeTimeout)
	defer deadline.Stop()
	select {
	case <-done:
		p.Logger.Info("upgrade: the sessions left here have ended; exiting")
		return
	case <-ctx.Done():
		p.Logger.Info("upgrade: stopping", "timeout", lim.ShutdownTimeout)
		p.waitOrClose(done, cancel, lim.ShutdownTimeout)
		p.Logger.Info("upgrade: the sessions left here have ended; exiting")
		return
	case <-deadline.C:
	}
	kicked := srv.KickAll("Server upgraded, please reconnect", lim.UpgradeWindow)
	p.Logger.Info("upgrade: upgrade_timeout reached; ending the remaining sessions", "sessions", kicked, "upgrade_window", lim.UpgradeWindow)
	// Each kick waits up to the kick timeout for a response boundary.
	p.waitOrClose(done, cancel, lim.UpgradeWindow+proxy.DefaultKickTimeout+time.Second)
	p.Logger.Info("upgrade: the sessions left here have ended; exiting")
}

// waitOrClose waits for done for at most d, then closes what is left.
func (p *Process) waitOrClose(done <-chan struct{}, closeRest context.CancelFunc, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		closeRest()
		<-done
	}
}

// absPath is path made absolute, or path when that fails.
func absPath(path string) string {
	if a, err := filepath.Abs(path); err == nil {
		return a
	}
	return path
}
