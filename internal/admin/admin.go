// Package admin is Portico's admin HTTP listener: /metrics, /healthz,
// /readyz and /debug/pprof/, behind an optional bearer token.
//
// Fleet commands (sessions, kick, move, drain) are not here: they are CLI
// commands over Redis, which reach every proxy at once.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"
)

// Options configure a Handler.
type Options struct {
	// Token, when not empty, is required as "Authorization: Bearer
	// <Token>" on every path but /healthz.
	Token string
	// Metrics serves /metrics; nil answers 404.
	Metrics http.Handler
	// Ready lists what keeps the proxy from serving (empty: ready) and
	// notes about what is degraded but still serving. It runs per request
	// and must finish within ctx. Nil means always ready.
	Ready func(ctx context.Context) (problems, notes []string)
}

// readyTimeout bounds one readiness check (a Redis PING among others).
const readyTimeout = 2 * time.Second

// NewHandler returns the admin endpoints.
//
// /healthz is open even with a token: it says only that the process
// answers, and the probes that call it (systemd, a load balancer's health
// check) often cannot send headers. /readyz names what is wrong, Redis
// addresses included, so it is guarded like the rest.
func NewHandler(o Options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	guarded := http.NewServeMux()
	if o.Metrics != nil {
		guarded.Handle("GET /metrics", o.Metrics)
	}
	guarded.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ready(w, r, o.Ready)
	})
	// Our own mux, not http.DefaultServeMux where importing net/http/pprof
	// registers them too.
	guarded.HandleFunc("GET /debug/pprof/", pprof.Index)
	guarded.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	guarded.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	guarded.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	guarded.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	guarded.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.Handle("/", requireToken(o.Token, guarded))
	return mux
}

func ready(w http.ResponseWriter, r *http.Request, check func(context.Context) ([]string, []string)) {
	var problems, notes []string
	if check != nil {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		problems, notes = check(ctx)
		cancel()
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready")
		for _, p := range problems {
			fmt.Fprintln(w, p)
		}
	} else {
		fmt.Fprintln(w, "ready")
	}
	for _, n := range notes {
		fmt.Fprintln(w, "degraded: "+n)
	}
}

// requireToken checks the bearer token in constant time: the hashes are
// compared, so that not even the token's length shows in the timing.
func requireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(got))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="portico"`)
			http.Error(w, "401 unauthorized: admin token required (Authorization: Bearer ...)", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Server is the admin listener. The zero value is not usable; call
// Listen.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen opens the admin listener at addr.
func Listen(addr string, h http.Handler, logger *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listen %q: %w", addr, err)
	}
	return NewServer(ln, h, logger), nil
}

// NewServer serves h on ln, a listener opened by the caller (or handed
// over by the process being upgraded); Serve owns ln from then on.
func NewServer(ln net.Listener, h http.Handler, logger *slog.Logger) *Server {
	return &Server{ln: ln, srv: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// Long enough for /debug/pprof/profile's default 30 s and a
		// trace of a minute; net/http/pprof refuses longer ones.
		WriteTimeout: 2 * time.Minute,
		IdleTimeout:  2 * time.Minute,
		ErrorLog:     slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}}
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until ctx ends, then closes the listener and waits up to a
// second for requests in progress (a scrape) to finish.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if s.srv.Shutdown(sctx) != nil {
			s.srv.Close() // a profile or trace in progress
		}
	})
	defer stop()
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("admin: serve %s: %w", s.ln.Addr(), err)
}
