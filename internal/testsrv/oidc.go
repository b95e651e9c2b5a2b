package testsrv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Issuer is an OpenID Connect issuer for tests, over HTTPS on a loopback
// port: discovery (/.well-known/openid-configuration), a JWKS whose key
// can be rotated, and RFC 7662 introspection of opaque tokens. Tokens are
// ES256 JWTs signed with the current key.
type Issuer struct {
	URL          string // the issuer, https://127.0.0.1:port
	Client       *http.Client
	CertPool     *x509.CertPool
	ClientID     string // introspection's HTTP Basic credentials
	ClientSecret string

	// HTTPURL is the same introspection on plain HTTP, for Dovecot's
	// oauth2 passdb (which would need the test CA otherwise): POST
	// token=... (introspection_mode = post) without client credentials.
	HTTPURL string

	srv, plain *httptest.Server
	mu         sync.Mutex
	keys       []jose.JSONWebKey // private keys; the last signs
	rotations  int
	opaque     map[string]map[string]any
	jwksHits   atomic.Int64
	introHits  atomic.Int64
	down       atomic.Bool
}

// StartIssuer starts an issuer with one signing key; t.Cleanup stops it.
func StartIssuer(t testing.TB) *Issuer {
	t.Helper()
	is := &Issuer{ClientID: "portico", ClientSecret: "portico-introspection-secret", opaque: map[string]map[string]any{}}
	is.Rotate(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{
			"issuer":                                is.URL,
			"jwks_uri":                              is.URL + "/jwks",
			"introspection_endpoint":                is.URL + "/introspect",
			"id_token_signing_alg_values_supported": []string{"ES256"},
		})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		is.jwksHits.Add(1)
		is.mu.Lock()
		set := jose.JSONWebKeySet{}
		for _, k := range is.keys {
			set.Keys = append(set.Keys, k.Public())
		}
		is.mu.Unlock()
		writeJSON(w, set)
	})
	mux.HandleFunc("/introspect", func(w http.ResponseWriter, r *http.Request) {
		if id, secret, ok := r.BasicAuth(); !ok || id != is.ClientID || secret != is.ClientSecret {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		is.introspect(w, r)
	})
	is.srv = httptest.NewUnstartedServer(is.guard(mux))
	is.srv.StartTLS()
	is.URL = is.srv.URL
	is.Client = is.srv.Client()
	is.CertPool = x509.NewCertPool()
	is.CertPool.AddCert(is.srv.Certificate())
	is.plain = httptest.NewServer(is.guard(http.HandlerFunc(is.introspect)))
	is.HTTPURL = is.plain.URL + "/introspect"
	t.Cleanup(func() {
		is.srv.Close()
		is.plain.Close()
	})
	return is
}

// guard answers 503 while the issuer is down.
func (is *Issuer) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if is.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (is *Issuer) introspect(w http.ResponseWriter, r *http.Request) {
	is.introHits.Add(1)
	if err := r.ParseForm(); err != nil || r.Method != http.MethodPost {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	is.mu.Lock()
	resp, ok := is.opaque[r.PostForm.Get("token")]
	is.mu.Unlock()
	if !ok {
		resp = map[string]any{"active": false}
	}
	writeJSON(w, resp)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// Rotate makes a new key the signing key and drops the old ones from the
// JWKS, as an issuer does once the old key's tokens have expired.
func (is *Issuer) Rotate(t testing.TB) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.rotations++
	kid := fmt.Sprintf("key-%d", is.rotations)
	is.keys = []jose.JSONWebKey{{Key: priv, KeyID: kid, Algorithm: string(jose.ES256), Use: "sig"}}
}

// Token returns a JWT with claims over the defaults iss (the issuer), exp
// (in an hour) and iat (now); a claim with a nil value is left out.
func (is *Issuer) Token(t testing.TB, claims map[string]any) string {
	t.Helper()
	all := map[string]any{"iss": is.URL, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range claims {
		if v == nil {
			delete(all, k)
		} else {
			all[k] = v
		}
	}
	payload, err := json.Marshal(all)
	if err != nil {
		t.Fatal(err)
	}
	is.mu.Lock()
	key := is.keys[len(is.keys)-1]
	is.mu.Unlock()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("at+jwt"))
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// SetOpaque makes introspection of token answer resp (RFC 7662 members:
// active, username, email, exp, aud, iss, ...).
func (is *Issuer) SetOpaque(token string, resp map[string]any) {
	is.mu.Lock()
	is.opaque[token] = resp
	is.mu.Unlock()
}

// OpaqueToken returns a random opaque token (RFC 6750 b64token).
func OpaqueToken() string {
	var b [24]byte
	rand.Read(b[:])
	return strings.TrimRight(fmt.Sprintf("opq.%x", b), "=")
}

// CAPEM returns the issuer's certificate in PEM, for a tls.ca_file.
func (is *Issuer) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.srv.Certificate().Raw})
}

// CloseConnections closes the connections clients keep open to the
// issuer (Dovecot's, and Client's idle ones), so that a goroutine count
// taken before they were opened holds again.
func (is *Issuer) CloseConnections() {
	is.Client.CloseIdleConnections()
	is.srv.CloseClientConnections()
	is.plain.CloseClientConnections()
}

// SetDown makes every endpoint answer 503 (true) or work again.
func (is *Issuer) SetDown(down bool) { is.down.Store(down) }

// JWKSFetches counts the JWKS requests so far.
func (is *Issuer) JWKSFetches() int64 { return is.jwksHits.Load() }

// Introspections counts the introspection requests so far.
func (is *Issuer) Introspections() int64 { return is.introHits.Load() }
