package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// renewScript extends the sweeper lease if it is still the caller's.
var renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`)

// sweeper deletes the entries of dead instances (crashed proxies, or
// earlier incarnations of live ones). One proxy of the fleet does it at a
// time, elected with SET NX PX; the others only try to take the lease
// once a heartbeat. Readers never wait for it: they already ignore dead
// instances. It deletes in paced chunks, so that a crashed proxy's
// 100,000 sessions never block Redis.
func (f *Fleet) sweeper(ctx context.Context) {
	var b [8]byte
	rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	h := health{log: f.log, what: "sweeper"}
	lease := f.ttl()
	t := time.NewTimer(f.hb)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := f.sweepOnce(ctx, token, lease)
		if ctx.Err() != nil {
			return
		}
		t.Reset(h.next(err, f.hb))
	}
}

// sweepOnce takes or keeps the lease and, when it holds it, sweeps every
// dead instance.
func (f *Fleet) sweepOnce(ctx context.Context, token string, lease time.Duration) error {
	held, err := f.holdLease(ctx, token, lease)
	if err != nil || !held {
		return err
	}
	if err := f.pruneHot(ctx); err != nil {
		return err
	}
	octx, cancel := context.WithTimeout(ctx, f.opTimeout())
	dead, err := deadScript.Run(octx, f.Client, []string{f.keys.instances}).StringSlice()
	cancel()
	if err != nil {
		return fmt.Errorf("fleet: sweeper: list dead proxies: %w", err)
	}
	renewed := time.Now()
	for _, inst := range dead {
		if err := f.sweep(ctx, inst, func() (bool, error) {
			if time.Since(renewed) < f.hb {
				return true, nil
			}
			renewed = time.Now()
			return f.holdLease(ctx, token, lease)
		}); err != nil {
			return err
		}
	}
	return nil
}

func (f *Fleet) holdLease(ctx context.Context, token string, lease time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, f.opTimeout())
	defer cancel()
	ok, err := f.Client.SetNX(ctx, f.keys.sweeper, token, lease).Result()
	if err == nil && !ok {
		var n int64
		n, err = renewScript.Run(ctx, f.Client, []string{f.keys.sweeper}, token, lease.Milliseconds()).Int64()
		ok = n == 1
	}
	if err != nil {
		return false, fmt.Errorf("fleet: sweeper lease: %w", err)
	}
	return ok, nil
}

// sweep deletes a dead instance's sessions chunk by chunk, then the
// instance itself. keep is asked between chunks whether the lease is
// still held.
func (f *Fleet) sweep(ctx context.Context, inst string, keep func() (bool, error)) error {
	ik := f.keys.inst(inst)
	var cursor uint64
	for {
		if ok, err := keep(); err != nil || !ok {
			return err
		}
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, f.opTimeout())
		kv, next, err := f.Client.HScan(cctx, ik, cursor, "", scanCount).Result()
		if err == nil && len(kv) > 0 {
			b := f.newBatch(inst)
			for i := 0; i+1 < len(kv); i += 2 {
				b.remove(cctx, kv[i], detailUser(kv[i+1]))
			}
			if err = b.exec(cctx); err == nil {
				f.bump(func(s *Stats) { s.Swept += uint64(len(kv) / 2) })
			}
		}
		if err == nil && next == 0 {
			// Done when the hash is gone: a zombie writer of this
			// instance may still have added to it meanwhile.
			var n int64
			if n, err = f.Client.Exists(cctx, ik).Result(); err == nil && n == 0 {
				err = forgetScript.Run(cctx, f.Client, []string{f.keys.instances}, inst).Err()
				cancel()
				if err == nil {
					f.log.Info("fleet: swept the sessions of a dead proxy", "instance", inst)
				}
				return err
			}
		}
		cancel()
		if err != nil {
			return fmt.Errorf("fleet: sweep %s: %w", inst, err)
		}
		cursor = next
		pace := time.Duration(len(kv)/2) * time.Second / time.Duration(f.rate)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pace - time.Since(start)):
		}
	}
}
