package tls

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"
)

// Reloader keeps a Store in step with its certificate files:
//
//	store, err := tls.LoadStore(pairs)
//	r := &tls.Reloader{Store: store, Pairs: pairs, Logger: logger}
//	go r.Run(ctx)
//	// on SIGHUP:
//	if err := r.Reload(); err != nil { logger.Error("reload", "err", err) }
//
// A reload loads every pair into a new set and swaps it in with
// Store.Replace, so a handshake sees the old set or the new one, never a
// mix or nothing. When any file is bad (unreadable, half-written, a key
// that does not match its certificate), the old set keeps serving.
type Reloader struct {
	Store *Store
	Pairs []Pair
	// Interval is how often the files are checked for changes (size,
	// modification time, inode); zero means 30s.
	Interval time.Duration
	// ExpiryWarning is how close to expiry a certificate gets a warning,
	// logged at start, after each reload and once a day; zero means 14
	// days.
	ExpiryWarning time.Duration
	// Logger receives reload errors and expiry warnings; nil means
	// slog.Default().
	Logger *slog.Logger

	mu       sync.Mutex // serialises reloads: Run and Reload (SIGHUP) may race
	loaded   []fileState
	failed   []fileState // the state an error was logged for, to log it once
	lastWarn time.Time
}

// settle is how long a check waits for a file being written to stop
// changing before it reports the file as bad. A variable for tests.
var settle = 250 * time.Millisecond

// fileState identifies a version of a file without reading it. The inode
// catches a rename of a file with the same size and time (cp -p; mv), and
// Kubernetes' symlink swap of secret volumes, since Stat follows links.
type fileState struct {
	name  string
	size  int64
	mtime int64 // ns; comparable, unlike time.Time
	ctime int64 // ns; catches a chmod that makes an unreadable key readable
	dev   uint64
	ino   uint64
	err   string
}

func (r *Reloader) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

func (r *Reloader) expiryWarning() time.Duration {
	if r.ExpiryWarning > 0 {
		return r.ExpiryWarning
	}
	return 14 * 24 * time.Hour
}

// Run checks the files every Interval until ctx is done, reloading the
// store when they change, and logs expiry warnings at start and once a
// day. Run assumes the store was loaded from Pairs just before; a change
// in between is caught by the first check.
func (r *Reloader) Run(ctx context.Context) {
	interval := r.Interval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	r.mu.Lock()
	if r.loaded == nil {
		// Comparing with the files as they are now could miss a change
		// made since the caller's LoadStore; one reload costs little.
		st := r.stat()
		if err := r.loadLocked(st, false); err != nil {
			r.failed = st
			r.logger().Error("tls: certificate reload failed; the previous certificates stay in service", "err", err)
		}
	}
	r.warnLocked()
	r.mu.Unlock()

	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		r.checkLocked(ctx)
		if time.Since(r.lastWarn) >= 24*time.Hour {
			r.warnLocked()
		}
		r.mu.Unlock()
	}
}

// Reload loads the files now, whatever their state, and swaps the new set
// in. On error the old set keeps serving and the error, which names the
// file and the problem, is returned for the caller to log; Run will not log
// it again for the same file versions.
func (r *Reloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stat()
	err := r.loadLocked(st, true)
	if err != nil {
		r.failed = st
	}
	return err
}

// checkLocked reloads when the files changed since the last load. A file
// being written in place (truncated, then filled) fails to load halfway; a
// failure is reported only once the files stay the same for settle, and
// only once per version of the files.
func (r *Reloader) checkLocked(ctx context.Context) {
	st := r.stat()
	if slices.Equal(st, r.loaded) || slices.Equal(st, r.failed) {
		return
	}
	// A file that never stops changing is reported after a few tries
	// rather than holding the lock (and SIGHUP reloads) forever.
	for try := 1; ; try++ {
		err := r.loadLocked(st, true)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(settle):
		}
		now := r.stat()
		if slices.Equal(now, st) || try == 8 {
			r.failed = st
			r.logger().Error("tls: certificate reload failed; the previous certificates stay in service", "err", err)
			return
		}
		r.logger().Debug("tls: certificate files changed while loading; retrying", "err", err)
		st = now // still being written: try the newer version
		if slices.Equal(st, r.loaded) {
			return // written back as it was
		}
	}
}

// loadLocked builds a new set from the files, whose state before reading
// was st, and swaps it in; announce logs the reload and the expiry
// warnings that follow it.
func (r *Reloader) loadLocked(st []fileState, announce bool) error {
	if r.Store == nil {
		return errors.New("tls: reload: no store")
	}
	next, err := LoadStore(r.Pairs)
	if err != nil {
		return err
	}
	r.Store.Replace(next)
	r.loaded, r.failed = st, nil
	if announce {
		r.logger().Info("tls: certificates reloaded", "count", len(r.Pairs))
		r.warnLocked()
	}
	return nil
}

func (r *Reloader) warnLocked() {
	r.lastWarn = time.Now()
	if r.Store == nil {
		return
	}
	for _, w := range r.Store.Warnings(r.expiryWarning()) {
		r.logger().Warn(w)
	}
}

func (r *Reloader) stat() []fileState {
	st := make([]fileState, 0, 2*len(r.Pairs))
	for _, p := range r.Pairs {
		st = append(st, statFile(p.CertFile), statFile(p.KeyFile))
	}
	return st
}

func statFile(name string) fileState {
	fi, err := os.Stat(name)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fileState{name: name, err: err.Error()}
	}
	s := fileState{name: name, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	s.dev, s.ino, s.ctime = fileIdentity(fi)
	return s
}

// String is for debugging.
func (s fileState) String() string {
	if s.err != "" {
		return fmt.Sprintf("%s: %s", s.name, s.err)
	}
	return fmt.Sprintf("%s: %d bytes, mtime %s, inode %d", s.name, s.size, time.Unix(0, s.mtime).Format(time.RFC3339Nano), s.ino)
}
