package app

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"github.com/portico-mail/portico/config"
	ptls "github.com/portico-mail/portico/tls"
)

// buildTLS loads file certificates, prepares ACME (without network access)
// and builds the one tls.Config every client listener uses. A reload
// (prev set) keeps prev's ACME manager: it owns the challenge listeners
// and the renewals. Of tls.acme, a reload changes the hostnames
// (acmeHostnames, applied when the reload commits); the rest needs a
// restart or an upgrade.
func (rt *App) buildTLS(cfg *config.Config, logger *slog.Logger, prev *App) error {
	rt.tlsCfg = cfg.TLS
	if len(cfg.TLS.Certificates) > 0 {
		rt.pairs = make([]ptls.Pair, len(cfg.TLS.Certificates))
		for i, c := range cfg.TLS.Certificates {
			rt.pairs[i] = ptls.Pair{CertFile: c.CertFile, KeyFile: c.KeyFile}
		}
		store, err := ptls.LoadStore(rt.pairs)
		if err != nil {
			return err
		}
		rt.Store = store
	}
	if prev != nil {
		rt.ACME, rt.acmeCfg = prev.ACME, prev.acmeCfg
		if a := cfg.TLS.ACME; rt.ACME != nil && a != nil && !slices.Equal(a.Hostnames, rt.acmeCfg.Hostnames) &&
			acmeEqualButHostnames(*a, *rt.acmeCfg) {
			apply, err := rt.ACME.PrepareHostnames(a.Hostnames)
			if err != nil {
				return fmt.Errorf("tls.acme.hostnames: %w", err)
			}
			rt.acmeHostnames, rt.acmeCfg = apply, a
		}
	} else if a := cfg.TLS.ACME; a != nil {
		m, err := rt.buildACME(a, logger)
		if err != nil {
			return fmt.Errorf("tls.acme: %w", err)
		}
		rt.ACME, rt.acmeCfg = m, a
	}
	if rt.Store == nil && rt.ACME == nil {
		return nil // no TLS listener can work; config validation says so
	}
	rt.tlsConfig = ptls.NewServerConfig(ptls.ServerOptions{
		Store:                  rt.Store,
		GetCertificate:         rt.getCertificate,
		MinVersion:             cfg.TLS.MinTLSVersion(),
		CipherSuites:           cfg.TLS.CipherSuiteIDs(),
		Curves:                 cfg.TLS.CurveIDs(),
		SessionTicketsDisabled: cfg.TLS.SessionTickets.Disabled,
	})
	if st := cfg.TLS.SessionTickets; st.Redis && !st.Disabled && rt.Redis != nil {
		rt.tickets = &ptls.TicketKeys{
			Client: rt.Redis, Prefix: rt.RedisPrefix, Secret: []byte(st.Key.Value),
			Rotation: st.Rotation, Logger: logger,
		}
	}
	return nil
}

// acmeEqualButHostnames reports whether a and b differ in hostnames at
// most: what a reload can apply to a running ACME manager.
func acmeEqualButHostnames(a, b config.ACME) bool {
	a.Hostnames, b.Hostnames = nil, nil
	return reflect.DeepEqual(a, b)
}

// getCertificate serves ACME's names (and clients without SNI, which get
// ACME's default name) from ACME, everything else from the files.
func (rt *App) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if rt.ACME != nil {
		c, err := rt.ACME.GetCertificate(hello)
		if err == nil || rt.Store == nil || !errors.Is(err, ptls.ErrNotManaged) {
			return c, err
		}
	}
	return rt.Store.GetCertificate(hello)
}

// acmeTag separates cache entries by ACME directory, so that certificates
// from the staging CA are never served after a switch to production.
func acmeTag(directoryURL string) string {
	h := sha256.Sum256([]byte(directoryURL))
	return hex.EncodeToString(h[:4])
}

func (rt *App) buildACME(a *config.ACME, logger *slog.Logger) (*ptls.ACME, error) {
	opts := ptls.ACMEOptions{
		Hostnames:    a.Hostnames,
		Email:        a.Email,
		DirectoryURL: a.DirectoryURL,
		RenewBefore:  a.RenewBefore,
		Logger:       logger,
	}
	if a.CAFile != "" {
		pem, err := os.ReadFile(a.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no certificates", a.CAFile)
		}
		opts.HTTPClient = &http.Client{
			Timeout:   time.Minute,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
		}
	}
	tag := acmeTag(a.DirectoryURL)
	var key []byte
	if a.CacheKey.Value != "" {
		key = []byte(a.CacheKey.Value)
	}
	switch a.Cache {
	case "redis":
		if rt.Redis == nil {
			return nil, errors.New("cache redis needs routing.redis")
		}
		prefix := rt.RedisPrefix + tag + ":"
		opts.Cache = &ptls.RedisCache{Client: rt.Redis, Prefix: prefix, Key: key, Logger: logger}
		opts.Lock = &ptls.RedisLocker{Client: rt.Redis, Prefix: prefix}
	default:
		var c autocert.Cache = autocert.DirCache(filepath.Join(a.CacheDir, tag))
		if key != nil {
			c = &ptls.EncryptedCache{Cache: c, Key: key, Logger: logger}
		}
		opts.Cache = c
	}
	return ptls.NewACME(opts)
}

// startTLS runs what keeps certificates and keys current until ctx ends:
// the ACME challenge listeners and first issuance (before any client
// listener opens), file reloads and shared ticket keys. It returns the
// reload function for SIGHUP.
func (rt *App) startTLS(ctx context.Context, logger *slog.Logger) (reload func(), err error) {
	if rt.ACME != nil {
		if err := rt.startACME(ctx, logger); err != nil {
			return nil, err
		}
	}
	return rt.startCertReloads(ctx, logger), nil
}

// startCertReloads runs the file reloads and the shared ticket keys of
// this App's certificates until ctx ends, and returns the reload function
// for SIGHUP.
func (rt *App) startCertReloads(ctx context.Context, logger *slog.Logger) (reload func()) {
	reload = func() {}
	if rt.Store != nil {
		r := &ptls.Reloader{
			Store: rt.Store, Pairs: rt.pairs, Interval: rt.tlsCfg.ReloadInterval,
			ExpiryWarning: rt.tlsCfg.ExpiryWarning, Logger: logger,
		}
		go r.Run(ctx)
		reload = func() {
			if err := r.Reload(); err != nil {
				logger.Error("tls: reload failed; the previous certificates stay in service", "err", err)
				return
			}
			logger.Info("tls: certificates reloaded on SIGHUP")
		}
	}
	if rt.tickets != nil {
		go rt.tickets.Run(ctx, rt.tlsConfig)
	}
	return reload
}

func (rt *App) startACME(ctx context.Context, logger *slog.Logger) error {
	// The challenge listeners close when ctx ends, or earlier when a new
	// process has taken them over (StopChallenges).
	ctx, rt.stopChallenges = context.WithCancel(ctx)
	if addr := rt.acmeCfg.HTTPChallengeAddress(); addr != "" {
		key := "acme-http " + addr
		ln, err := rt.listen(ctx, key, addr)
		if err != nil {
			return fmt.Errorf("tls.acme.http_address: %w", err)
		}
		srv := &http.Server{Handler: rt.ACME.HTTPHandler(), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		context.AfterFunc(ctx, func() { rt.sockets.closed(key); srv.Close() })
		logger.Info("acme: HTTP-01 challenges", "addr", ln.Addr().String())
	}
	if addr := rt.acmeCfg.TLSALPNChallengeAddress(); addr != "" {
		key := "acme-tls-alpn " + addr
		ln, err := rt.listen(ctx, key, addr)
		if err != nil {
			return fmt.Errorf("tls.acme.tls_alpn_address: %w", err)
		}
		go serveALPNChallenges(tls.NewListener(ln, rt.ACME.TLSALPNConfig()))
		context.AfterFunc(ctx, func() { rt.sockets.closed(key); ln.Close() })
		logger.Info("acme: TLS-ALPN-01 challenges", "addr", ln.Addr().String())
	}
	octx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	if err := rt.ACME.Obtain(octx); err != nil {
		return fmt.Errorf("acme: obtaining certificates for %v: %w", rt.ACME.Hostnames(), err)
	}
	for _, c := range rt.ACME.Certificates() {
		logger.Info("acme: certificate in service", "cert", c, "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// listen opens a listening socket for key, or takes the one a process
// being upgraded handed on.
func (rt *App) listen(ctx context.Context, key, addr string) (net.Listener, error) {
	ln, _, err := rt.sockets.listen(ctx, key, func(ctx context.Context) (net.Listener, error) {
		var lc net.ListenConfig
		return lc.Listen(ctx, "tcp", addr)
	})
	return ln, err
}

// serveALPNChallenges completes TLS-ALPN-01 handshakes; the validation is
// the handshake itself, so each connection is closed right after it.
func serveALPNChallenges(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.(*tls.Conn).Handshake()
		}()
	}
}
