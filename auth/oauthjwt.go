package auth

import (
	"bytes"
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
)

// JWT validation with go-oidc: discovery once, then a RemoteKeySet that
// caches the issuer's keys and fetches them again when a token names a key
// id it does not know (the issuer rotated its keys).

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
	// The key set lives as long as o: its context only carries the HTTP
	// client (go-oidc ignores its cancellation).
	cctx := oidc.ClientContext(context.Background(), o.client)
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
	o.client.Transport.(*jwksThrottle).setURL(jwks)
	keys := &keySet{remote: oidc.NewRemoteKeySet(cctx, jwks)}
	o.verifier = oidc.NewVerifier(o.cfg.Issuer, keys, &oidc.Config{
		// The audience is checked by verifyJWT, against a list.
		SkipClientIDCheck:    true,
		SupportedSigningAlgs: signingAlgs,
	})
	return o.verifier, nil
}

type verifyStateKey struct{}

// verifyState carries out of go-oidc whether a verification failed for
// want of the issuer's keys: go-oidc flattens that error into text.
type verifyState struct{ unavailable bool }

// keySet is the RemoteKeySet, telling a failed key fetch (the issuer is
// unreachable: UNAVAILABLE) from a bad signature (the token is refused).
type keySet struct{ remote *oidc.RemoteKeySet }

func (k *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	p, err := k.remote.VerifySignature(ctx, jwt)
	if err != nil && strings.HasPrefix(err.Error(), "fetching keys") {
		if st, ok := ctx.Value(verifyStateKey{}).(*verifyState); ok {
			st.unavailable = true
		}
	}
	return p, err
}

// jwksThrottle is the issuer client's transport. A token with a key id
// the cache lacks makes go-oidc fetch the JWKS again; anyone can forge
// such tokens, so after a burst of three, fetches go at most one per
// every: in between, the last key set is answered again. An issuer
// publishes a new key before it signs with it, so a real rotation is seen
// by the first fetch after the key appeared.
type jwksThrottle struct {
	base  http.RoundTripper
	every time.Duration

	mu     sync.Mutex
	url    string
	tokens float64
	last   time.Time // of the last refill
	body   []byte    // the last good key set
}

const (
	jwksBurst   = 3
	maxJWKSSize = 1 << 20
)

func (j *jwksThrottle) setURL(u string) {
	j.mu.Lock()
	j.url, j.tokens, j.last = u, jwksBurst, time.Now()
	j.mu.Unlock()
}

func (j *jwksThrottle) RoundTrip(req *http.Request) (*http.Response, error) {
	j.mu.Lock()
	isJWKS := req.Method == http.MethodGet && j.url != "" && req.URL.String() == j.url
	if !isJWKS {
		j.mu.Unlock()
		return j.base.RoundTrip(req)
	}
	now := time.Now()
	j.tokens = min(jwksBurst, j.tokens+float64(now.Sub(j.last))/float64(j.every))
	j.last = now
	if j.tokens < 1 && j.body != nil {
		body := j.body
		j.mu.Unlock()
		return cachedResponse(req, body), nil
	}
	j.tokens--
	j.mu.Unlock()

	resp, err := j.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSSize+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJWKSSize {
		return nil, errors.New("key set larger than 1 MiB")
	}
	if resp.StatusCode == http.StatusOK {
		j.mu.Lock()
		j.body = body
		j.mu.Unlock()
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

func cachedResponse(req *http.Request, body []byte) *http.Response {
	return &http.Response{
		Status: "200 OK", StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:  http.Header{"Content-Type": []string{"application/json"}},
		Body:    io.NopCloser(bytes.NewReader(body)),
		Request: req, ContentLength: int64(len(body)),
	}
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
