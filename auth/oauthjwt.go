package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
)

// JWT validation with go-oidc's verifier (claims, expiry, issuer): discovery
// once, then our keySet, which caches the issuer's keys and fetches them
// again when a token's signature does not verify with them (the issuer
// rotated its keys).

// signingAlgs are the algorithms accepted for tokens: asymmetric only
// (no "none", no HMAC, whose key would be the issuer's client secret).
var signingAlgs = []string{
	oidc.RS256, oidc.RS384, oidc.RS512, oidc.ES256, oidc.ES384, oidc.ES512,
	oidc.PS256, oidc.PS384, oidc.PS512, oidc.EdDSA,
}

// retryDiscovery is how long a failed discovery is not tried again; the
// logins meanwhile are answered UNAVAILABLE at once.
const retryDiscovery = 5 * time.Second

func (o *OAuth) verifyJWT(ctx context.Context, token string) (map[string]any, error) {
	v, err := o.jwtVerifier(ctx)
	if err != nil {
		return nil, err
	}
	st := &verifyState{}
	t, err := v.Verify(context.WithValue(ctx, verifyStateKey{}, st), token)
	if err != nil {
		if st.unavailable {
			return nil, fmt.Errorf("%w: %v", errUnavailable, err)
		}
		return nil, err
	}
	if !slices.ContainsFunc(t.Audience, func(a string) bool { return slices.Contains(o.cfg.Audience, a) }) {
		return nil, fmt.Errorf("audience %q not accepted", t.Audience)
	}
	var claims map[string]any
	if err := t.Claims(&claims); err != nil {
		return nil, err
	}
	return claims, nil
}

// jwtVerifier returns the verifier, running discovery first if need be.
func (o *OAuth) jwtVerifier(ctx context.Context) (*oidc.IDTokenVerifier, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.verifier != nil {
		return o.verifier, nil
	}
	if time.Since(o.lastTry) < retryDiscovery {
		return nil, fmt.Errorf("%w: discovery failed less than %v ago", errUnavailable, retryDiscovery)
	}
	jwks := o.cfg.JWKSURL
	if jwks == "" {
		dctx, cancel := context.WithTimeout(oidc.ClientContext(ctx, o.client), o.cfg.Timeout)
		p, err := oidc.NewProvider(dctx, o.cfg.Issuer)
		cancel()
		if err != nil {
			o.lastTry = time.Now()
			return nil, fmt.Errorf("%w: discovery at %s: %v", errUnavailable, o.cfg.Issuer, err)
		}
		var doc struct {
			JWKS string `json:"jwks_uri"`
		}
		if err := p.Claims(&doc); err != nil || doc.JWKS == "" {
			o.lastTry = time.Now()
			return nil, fmt.Errorf("%w: discovery at %s: no jwks_uri", errUnavailable, o.cfg.Issuer)
		}
		jwks = doc.JWKS
		if !strings.HasPrefix(jwks, "https://") {
			o.lastTry = time.Now()
			return nil, fmt.Errorf("%w: discovery at %s: jwks_uri is not https", errUnavailable, o.cfg.Issuer)
		}
	}
	o.verifier = oidc.NewVerifier(o.cfg.Issuer, newKeySet(jwks, o.client, o.cfg.JWKSMinRefresh), &oidc.Config{
		// The audience is checked by verifyJWT, against a list.
		SkipClientIDCheck:    true,
		SupportedSigningAlgs: signingAlgs,
	})
	return o.verifier, nil
}

type verifyStateKey struct{}

// verifyState carries out of go-oidc whether a verification failed for
// want of the issuer's keys: go-oidc flattens the key set's error into
// text (%v), so errors.Is cannot see errUnavailable through it.
type verifyState struct{ unavailable bool }

func markUnavailable(ctx context.Context) {
	if st, ok := ctx.Value(verifyStateKey{}).(*verifyState); ok {
		st.unavailable = true
	}
}

const (
	// jwksBurst fetches of the key set may follow each other at once;
	// then one per OAuthConfig.JWKSMinRefresh.
	jwksBurst   = 3
	maxJWKSSize = 1 << 20
)

// joseAlgs is signingAlgs for go-jose.
var joseAlgs = func() []jose.SignatureAlgorithm {
	a := make([]jose.SignatureAlgorithm, len(signingAlgs))
	for i, s := range signingAlgs {
		a[i] = jose.SignatureAlgorithm(s)
	}
	return a
}()

// keySet is the issuer's JWKS, cached in memory: an oidc.KeySet that
// fetches the keys again when a token's signature does not verify with
// the cached ones, because the issuer rotated its keys (OpenID Connect
// Core §10.1: an issuer publishes a key before it signs with it).
//
// It replaces go-oidc's RemoteKeySet, whose fetch (v3.21.0) hands its
// waiters the result before it takes the lock and forgets the fetch: a
// verification that missed the cache in between joined the finished
// fetch and got the keys from before the rotation, so the first token of
// a new key was refused when it came right after any other fetch. Here
// fetches are numbered, and the number is read with the cached keys: a
// verification that misses the cache accepts only the outcome of a fetch
// started after it read the cache (one under way then, or finished, may
// have been answered before the new key was published). Which fetch that
// is, whether to join it or start it, and publishing its keys together
// with its number all happen under mu, so there is no window between
// "done" and "forgotten".
//
// Fetches are throttled because a token naming a key id the issuer never
// had costs an attacker nothing: after a burst of jwksBurst, one per
// every; in between a miss is answered from the cached keys alone.
type keySet struct {
	url    string
	client *http.Client  // o.client: no redirects, a timeout
	every  time.Duration // the throttle's pace

	// testHook, when set, is called with "fetched" once a fetch has its
	// answer, before it is published, and with "wait" before a
	// verification waits for a fetch.
	testHook func(point string)

	mu      sync.Mutex
	keys    jose.JSONWebKeySet // of the last fetch that succeeded
	started uint64             // fetches started so far, numbered from 1
	done    uint64             // the number of the last fetch finished
	lastErr error              // of fetch number done; nil if it succeeded
	wait    chan struct{}      // closed when the fetch under way ends; nil if none is
	tokens  float64            // the throttle's bucket
	refill  time.Time          // when tokens was last brought up to date
}

func newKeySet(url string, client *http.Client, every time.Duration) *keySet {
	return &keySet{url: url, client: client, every: every, tokens: jwksBurst, refill: time.Now()}
}

// VerifySignature implements oidc.KeySet: it returns the payload of the
// JWS raw if one of the issuer's keys verifies it. The verifier checked
// the algorithm already; joseAlgs is checked again here all the same.
// A failure to get the keys marks the verification unavailable
// (markUnavailable): the issuer is down, the token is not known bad.
func (k *keySet) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSigned(raw, joseAlgs)
	if err != nil {
		return nil, fmt.Errorf("malformed jwt: %v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, fmt.Errorf("jwt has %d signatures, want 1", len(jws.Signatures))
	}
	kid := jws.Signatures[0].Header.KeyID

	k.mu.Lock()
	keys, seen := k.keys, k.started
	k.mu.Unlock()
	if p, ok := verifyJWS(jws, kid, keys); ok {
		return p, nil
	}
	keys, err = k.refresh(ctx, seen)
	if err != nil {
		markUnavailable(ctx)
		return nil, err
	}
	if p, ok := verifyJWS(jws, kid, keys); ok {
		return p, nil
	}
	if kid != "" && len(keys.Key(kid)) == 0 {
		// The key id comes from the token: quoted and cut short, for the log.
		if len(kid) > 40 {
			kid = kid[:40] + "..."
		}
		return nil, fmt.Errorf("no key %q in the issuer's key set", kid)
	}
	return nil, errors.New("no key of the issuer's verifies the signature")
}

// verifyJWS returns the payload of jws if a key of set verifies it: the
// keys named kid, or all of them when the token names none.
func verifyJWS(jws *jose.JSONWebSignature, kid string, set jose.JSONWebKeySet) ([]byte, bool) {
	keys := set.Keys
	if kid != "" {
		keys = set.Key(kid)
	}
	for i := range keys {
		if p, err := jws.Verify(&keys[i]); err == nil {
			return p, true
		}
	}
	return nil, false
}

// refresh returns the keys of a fetch started after the caller read the
// cache, when fetch number seen was the last one started: it joins that
// fetch if it is under way, or starts it. A fetch started before (the
// caller missed the cache while it was under way) is waited for, since
// it may have brought the key, and then another one is needed. While the
// throttle holds fetches back, the cached keys are returned: they may be
// newer than those the caller tried.
func (k *keySet) refresh(ctx context.Context, seen uint64) (jose.JSONWebKeySet, error) {
	k.mu.Lock()
	for {
		if k.done > seen {
			keys, err := k.keys, k.lastErr
			k.mu.Unlock()
			return keys, err
		}
		if k.wait == nil {
			if !k.allow(time.Now()) {
				keys, err := k.keys, k.lastErr
				k.mu.Unlock()
				if len(keys.Keys) == 0 {
					// No key set yet: nothing to refuse a token with.
					return keys, fmt.Errorf("issuer's key set: no fetch succeeded yet, and fetches are throttled (last: %v)", err)
				}
				return keys, nil
			}
			k.started++
			k.wait = make(chan struct{})
			// The fetch outlives the verification that started it, if
			// that one's context ends first: the others waiting for it
			// still want its keys. o.client's timeout bounds it.
			go k.fetch(k.started, k.wait)
		}
		wait := k.wait
		k.mu.Unlock()
		if k.testHook != nil {
			k.testHook("wait")
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return jose.JSONWebKeySet{}, fmt.Errorf("waiting for the issuer's key set: %w", context.Cause(ctx))
		}
		k.mu.Lock()
	}
}

// allow reports whether a fetch may start now, taking a token from the
// bucket if so. Called with mu held.
func (k *keySet) allow(now time.Time) bool {
	k.tokens = min(jwksBurst, k.tokens+float64(now.Sub(k.refill))/float64(k.every))
	k.refill = now
	if k.tokens < 1 {
		return false
	}
	k.tokens--
	return true
}

// fetch runs fetch number n and publishes its outcome: the keys, if it
// succeeded, and its number at once, under mu, before it wakes the
// waiters. A failed fetch keeps the keys cached before.
func (k *keySet) fetch(n uint64, wait chan struct{}) {
	keys, err := k.get()
	if k.testHook != nil {
		k.testHook("fetched")
	}
	k.mu.Lock()
	if err == nil {
		k.keys = keys
	}
	k.done, k.lastErr, k.wait = n, err, nil
	k.mu.Unlock()
	close(wait)
}

// get fetches and parses the key set.
func (k *keySet) get() (jose.JSONWebKeySet, error) {
	var none jose.JSONWebKeySet
	req, err := http.NewRequest(http.MethodGet, k.url, nil)
	if err != nil {
		return none, fmt.Errorf("issuer's key set: %v", err)
	}
	req.Header.Set("Accept", "application/json")
	// A cache on the way must not answer the keys from before a rotation.
	req.Header.Set("Cache-Control", "no-cache")
	resp, err := k.client.Do(req)
	if err != nil {
		// The error quotes the URL, which is no secret.
		return none, fmt.Errorf("issuer's key set: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return none, fmt.Errorf("issuer's key set at %s: HTTP %s", k.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSSize+1))
	if err != nil {
		return none, fmt.Errorf("issuer's key set at %s: %v", k.url, err)
	}
	if len(body) > maxJWKSSize {
		return none, fmt.Errorf("issuer's key set at %s: larger than 1 MiB", k.url)
	}
	keys, err := parseKeySet(body)
	if err != nil {
		return none, fmt.Errorf("issuer's key set at %s: %v", k.url, err)
	}
	return keys, nil
}

// parseKeySet keeps the keys of a JWKS that can check signatures with
// signingAlgs: public asymmetric keys not meant for encryption. Keys it
// cannot parse are left out, not fatal (RFC 7517 §5: an issuer may list
// key types we do not know, e.g. Ed448 or secp256k1); a set without a
// single usable key is an error.
func parseKeySet(body []byte) (jose.JSONWebKeySet, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &raw); err != nil {
		return set, fmt.Errorf("not a JWKS: %v", err)
	}
	for _, r := range raw.Keys {
		var key jose.JSONWebKey
		if err := key.UnmarshalJSON(r); err != nil {
			continue
		}
		if key.Use == "enc" || key.Algorithm != "" && !slices.Contains(signingAlgs, key.Algorithm) {
			continue
		}
		// Not symmetric keys (an HMAC key would be a shared secret), nor
		// private ones, which no issuer should publish.
		if !key.IsPublic() {
			continue
		}
		set.Keys = append(set.Keys, key)
	}
	if len(set.Keys) == 0 {
		return set, fmt.Errorf("none of its %d keys can verify signatures", len(raw.Keys))
	}
	return set, nil
}

// decodeJSON reads at most 64 KiB of JSON from r into v.
func decodeJSON(r io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(r, 64<<10+1))
	if err != nil {
		return err
	}
	if len(b) > 64<<10 {
		return errors.New("response larger than 64 KiB")
	}
	return json.Unmarshal(b, v)
}
