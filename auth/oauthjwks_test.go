package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/portico-mail/portico/internal/testsrv"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// The race go-oidc's RemoteKeySet had, forced: a fetch (here started by a
// token with a bad signature) has its answer, from before the issuer
// rotated its keys, when a token of the new key misses the cache. That
// token must not be judged with the keys of that fetch, which started
// before it came; go-oidc handed them to it, and refused it.
func TestKeySetRotationDuringFetch(t *testing.T) {
	is := testsrv.StartIssuer(t)
	ks := newKeySet(is.URL+"/jwks", is.Client, time.Nanosecond)
	ctx := testCtx(t)
	claims := map[string]any{"aud": "imap"}
	good := is.Token(t, claims)
	if _, err := ks.VerifySignature(ctx, good); err != nil {
		t.Fatal(err)
	}

	var once sync.Once
	fetched, release := make(chan struct{}), make(chan struct{})
	waits := make(chan struct{}, 10)
	ks.testHook = func(point string) {
		switch point {
		case "fetched":
			once.Do(func() { close(fetched); <-release })
		case "wait":
			waits <- struct{}{}
		}
	}
	badErr := make(chan error, 1)
	go func() {
		_, err := ks.VerifySignature(ctx, good[:len(good)-4]+"AAAA")
		badErr <- err
	}()
	<-fetched // fetch 2 holds the key set from before the rotation
	is.Rotate(t)
	rotated := is.Token(t, claims)
	rotatedErr := make(chan error, 1)
	go func() {
		_, err := ks.VerifySignature(ctx, rotated)
		rotatedErr <- err
	}()
	<-waits // both wait for fetch 2
	<-waits
	close(release)

	if err := <-rotatedErr; err != nil {
		t.Errorf("token of the new key, which missed the cache while an older fetch was under way: %v", err)
	}
	if err := <-badErr; err == nil {
		t.Error("bad signature verified")
	}
	if n := is.JWKSFetches(); n != 3 {
		t.Errorf("%d fetches, want 3: the first, the bad signature's, the new key's", n)
	}
}

// fakeJWKS serves a key set that tests change at will, and a token signer.
type fakeJWKS struct {
	srv  *httptest.Server
	priv *ecdsa.PrivateKey

	mu          sync.Mutex
	status      int
	body        []byte
	block       chan struct{} // when set, requests wait for it to close
	elsewhere   []byte        // the good key set, served at /elsewhere
	hits        int
	inFlight    int
	maxInFlight int
	method      string
	accept      string
}

func startFakeJWKS(t *testing.T) *fakeJWKS {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeJWKS{priv: priv, status: http.StatusOK}
	f.setKeys(t, jose.JSONWebKey{Key: &priv.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"})
	f.elsewhere = f.body
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.hits++
		f.inFlight++
		f.maxInFlight = max(f.maxInFlight, f.inFlight)
		f.method, f.accept = r.Method, r.Header.Get("Accept")
		status, body, block := f.status, f.body, f.block
		if r.URL.Path == "/elsewhere" {
			status, body = http.StatusOK, f.elsewhere
		}
		f.mu.Unlock()
		if block != nil {
			<-block
		}
		time.Sleep(10 * time.Millisecond) // lets concurrent verifications pile up
		f.mu.Lock()
		f.inFlight--
		f.mu.Unlock()
		if status == http.StatusFound {
			w.Header().Set("Location", "/elsewhere")
		}
		w.WriteHeader(status)
		w.Write(body)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeJWKS) setKeys(t *testing.T, keys ...jose.JSONWebKey) {
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	f.set(http.StatusOK, b)
}

func (f *fakeJWKS) set(status int, body []byte) {
	f.mu.Lock()
	f.status, f.body = status, body
	f.mu.Unlock()
}

func (f *fakeJWKS) fetches() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits
}

// last returns the method and Accept header of the last request, and the
// most requests there were at once.
func (f *fakeJWKS) last() (method, accept string, maxInFlight int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.method, f.accept, f.maxInFlight
}

// token signs a JWS with f's key, naming kid (none when empty).
func (f *fakeJWKS) token(t *testing.T, kid string) string {
	key := jose.JSONWebKey{Key: f.priv, KeyID: kid}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign([]byte(`{"sub":"alice"}`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// keySet returns a key set for f using the client NewOAuth makes (no
// redirects, a timeout).
func (f *fakeJWKS) keySet(t *testing.T, every time.Duration) *keySet {
	o, err := NewOAuth(OAuthConfig{
		Issuer: f.srv.URL, Audience: []string{"imap"}, Master: Master{User: "m", Password: "p"},
		HTTPClient: f.srv.Client(), Timeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return newKeySet(f.srv.URL+"/jwks", o.client, every)
}

// verify returns the error of VerifySignature and whether it marked the
// verification unavailable.
func verify(t *testing.T, ks *keySet, tok string) (error, bool) {
	st := &verifyState{}
	_, err := ks.VerifySignature(context.WithValue(testCtx(t), verifyStateKey{}, st), tok)
	if err != nil && strings.Contains(err.Error(), tok) {
		t.Errorf("the token is in the error %q", err)
	}
	return err, st.unavailable
}

func TestKeySetCache(t *testing.T) {
	f := startFakeJWKS(t)
	ks := f.keySet(t, time.Hour)
	for i := 0; i < 3; i++ {
		if err, _ := verify(t, ks, f.token(t, "k1")); err != nil {
			t.Fatal(err)
		}
	}
	if err, _ := verify(t, ks, f.token(t, "")); err != nil {
		t.Errorf("token without a key id: %v", err)
	}
	if n := f.fetches(); n != 1 {
		t.Errorf("%d fetches for tokens of a cached key, want 1", n)
	}
	if method, accept, _ := f.last(); method != http.MethodGet || accept != "application/json" {
		t.Errorf("fetched with %s, Accept %q", method, accept)
	}
}

// Many verifications miss the cache at once: one fetch at a time, and all
// verify with its keys.
func TestKeySetConcurrentMiss(t *testing.T) {
	f := startFakeJWKS(t)
	ks := f.keySet(t, time.Hour)
	if err, _ := verify(t, ks, f.token(t, "k1")); err != nil {
		t.Fatal(err)
	}
	priv2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.setKeys(t, jose.JSONWebKey{Key: &priv2.PublicKey, KeyID: "k2", Algorithm: "ES256", Use: "sig"},
		jose.JSONWebKey{Key: &f.priv.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"})
	f.priv = priv2
	tok := f.token(t, "k2")
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Go(func() {
			err, _ := verify(t, ks, tok)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("new key: %v", err)
		}
	}
	// One fetch for those that missed before it started, at most one more
	// for those that missed while it was under way.
	if n := f.fetches() - 1; n < 1 || n > 2 {
		t.Errorf("%d fetches for 20 tokens of a new key, want 1 or 2", n)
	}
	if _, _, n := f.last(); n != 1 {
		t.Errorf("%d fetches at once, want 1", n)
	}
}

// A key set that cannot be had makes the verification unavailable, not
// the token refused; the keys cached before stay.
func TestKeySetFetchFailures(t *testing.T) {
	okKey := func(f *fakeJWKS) jose.JSONWebKey {
		return jose.JSONWebKey{Key: &f.priv.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}
	}
	for name, serve := range map[string]func(*fakeJWKS){
		"503":      func(f *fakeJWKS) { f.set(http.StatusServiceUnavailable, []byte(`{"keys":[]}`)) },
		"bad json": func(f *fakeJWKS) { f.set(http.StatusOK, []byte(`{"keys":[`)) },
		"too large": func(f *fakeJWKS) {
			b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{okKey(f)}})
			f.set(http.StatusOK, append(b, make([]byte, maxJWKSSize)...))
		},
		"no keys": func(f *fakeJWKS) { f.set(http.StatusOK, []byte(`{"keys":[]}`)) },
		"enc key only": func(f *fakeJWKS) {
			k := okKey(f)
			k.Use, k.Algorithm = "enc", ""
			f.setKeys(t, k)
		},
		"hmac key only": func(f *fakeJWKS) {
			f.set(http.StatusOK, []byte(`{"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]}`))
		},
		// The keys are fetched from where the configuration says only.
		"redirect": func(f *fakeJWKS) { f.set(http.StatusFound, nil) },
	} {
		t.Run(name, func(t *testing.T) {
			f := startFakeJWKS(t)
			serve(f)
			ks := f.keySet(t, time.Nanosecond)
			err, unavailable := verify(t, ks, f.token(t, "k1"))
			if err == nil || !unavailable {
				t.Fatalf("no key set yet: %v, unavailable %v; want an unavailable error", err, unavailable)
			}
			f.setKeys(t, okKey(f))
			if err, _ := verify(t, ks, f.token(t, "k1")); err != nil {
				t.Fatalf("key set back: %v", err)
			}
			serve(f)
			if err, unavailable := verify(t, ks, f.token(t, "k2")); err == nil || !unavailable {
				t.Errorf("unknown key while the key set fails: %v, unavailable %v; want an unavailable error", err, unavailable)
			}
			n := f.fetches()
			if err, _ := verify(t, ks, f.token(t, "k1")); err != nil {
				t.Errorf("cached key after a failed fetch: %v", err)
			}
			if f.fetches() != n {
				t.Error("a cached key fetched the key set")
			}
		})
	}
}

// Keys that cannot verify our algorithms are left out, not fatal.
func TestKeySetSkipsUnusableKeys(t *testing.T) {
	f := startFakeJWKS(t)
	good, _ := json.Marshal(jose.JSONWebKey{Key: &f.priv.PublicKey, KeyID: "k1", Use: "sig"})
	asEnc, _ := json.Marshal(jose.JSONWebKey{Key: &f.priv.PublicKey, KeyID: "k2", Use: "enc"})
	f.set(http.StatusOK, []byte(`{"keys":[`+
		`{"kty":"EC","crv":"secp256k1","kid":"k0","x":"AAAA","y":"AAAA"},`+
		`{"kty":"OKP","crv":"Ed448","kid":"k0","x":"AAAA"},`+
		`{"kty":"oct","kid":"k3","alg":"HS256","k":"`+base64.RawURLEncoding.EncodeToString([]byte(strings.Repeat("secret", 6)))+`"},`+
		string(asEnc)+`,`+string(good)+`]}`))
	ks := f.keySet(t, time.Hour)
	if err, _ := verify(t, ks, f.token(t, "k1")); err != nil {
		t.Fatalf("good key among unusable ones: %v", err)
	}
	// The same key listed for encryption does not verify signatures.
	if err, unavailable := verify(t, ks, f.token(t, "k2")); err == nil || unavailable {
		t.Errorf("token naming the encryption key: %v, unavailable %v; want a refusal", err, unavailable)
	}
	// The HMAC key is not accepted, nor HS256 at all.
	hs, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: jose.JSONWebKey{Key: []byte(strings.Repeat("secret", 6)), KeyID: "k3"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := hs.Sign([]byte(`{"sub":"alice"}`))
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := jws.CompactSerialize()
	if err, _ := verify(t, ks, tok); err == nil {
		t.Error("HS256 token verified")
	}
}

// Tokens with key ids the issuer lacks fetch a burst of three times, then
// not until the throttle allows: they are answered from the cache.
func TestKeySetThrottle(t *testing.T) {
	f := startFakeJWKS(t)
	ks := f.keySet(t, time.Hour)
	for i := 0; i < 10; i++ {
		if err, unavailable := verify(t, ks, f.token(t, "forged")); err == nil || unavailable {
			t.Fatalf("unknown key id: %v, unavailable %v; want a refusal", err, unavailable)
		}
	}
	if n := f.fetches(); n != jwksBurst {
		t.Errorf("%d fetches for 10 unknown key ids, want the burst of %d", n, jwksBurst)
	}
	if err, _ := verify(t, ks, f.token(t, "k1")); err != nil {
		t.Errorf("good token while throttled: %v", err)
	}

	// Throttled before any fetch succeeded: unavailable, with no fetch.
	f2 := startFakeJWKS(t)
	f2.set(http.StatusServiceUnavailable, nil)
	ks = f2.keySet(t, time.Hour)
	for i := 0; i < 5; i++ {
		if err, unavailable := verify(t, ks, f2.token(t, "k1")); err == nil || !unavailable {
			t.Fatalf("key set down: %v, unavailable %v", err, unavailable)
		}
	}
	if n := f2.fetches(); n != jwksBurst {
		t.Errorf("%d fetches of a key set that is down, want %d", n, jwksBurst)
	}
}

// A verification waits for the fetch no longer than its context allows.
func TestKeySetWaitBoundedByContext(t *testing.T) {
	f := startFakeJWKS(t)
	f.block = make(chan struct{})
	ks := f.keySet(t, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	st := &verifyState{}
	start := time.Now()
	_, err := ks.VerifySignature(context.WithValue(ctx, verifyStateKey{}, st), f.token(t, "k1"))
	if err == nil || !st.unavailable || time.Since(start) > time.Second {
		t.Errorf("after %v: %v, unavailable %v; want an unavailable error at the deadline", time.Since(start), err, st.unavailable)
	}
	// The fetch goes on, and the next verification has its keys.
	close(f.block)
	for {
		ks.mu.Lock()
		done := ks.done
		ks.mu.Unlock()
		if done == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err, _ := verify(t, ks, f.token(t, "k1")); err != nil {
		t.Errorf("after the slow fetch: %v", err)
	}
	if n := f.fetches(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
}
