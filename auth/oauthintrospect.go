package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// introspect asks the issuer about an opaque token (RFC 7662) and returns
// the response's members as claims when the token is active, belongs to
// the issuer and audience configured (when the response says), and has
// not expired.
func (o *OAuth) introspect(ctx context.Context, token string) (map[string]any, error) {
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.cfg.IntrospectionURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("%w: introspection: %v", errUnavailable, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.SetBasicAuth(url.QueryEscape(o.cfg.ClientID), url.QueryEscape(o.cfg.ClientSecret)) // RFC 6749 §2.3.1
	resp, err := o.client.Do(req)
	if err != nil {
		// The error of a failed request quotes its URL, never its body.
		return nil, fmt.Errorf("%w: introspection: %v", errUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// 401 included: our client credentials are the problem, not the
		// client's token.
		return nil, fmt.Errorf("%w: introspection: HTTP %s", errUnavailable, resp.Status)
	}
	var claims map[string]any
	if err := decodeJSON(resp.Body, &claims); err != nil {
		return nil, fmt.Errorf("%w: introspection response: %v", errUnavailable, err)
	}
	if active, _ := claims["active"].(bool); !active {
		return nil, errors.New("token not active")
	}
	if iss, ok := claims["iss"].(string); ok && o.cfg.Issuer != "" && iss != o.cfg.Issuer {
		return nil, fmt.Errorf("issuer %q not accepted", iss)
	}
	if aud, ok := claims["aud"]; ok && len(o.cfg.Audience) > 0 {
		var auds []string
		switch a := aud.(type) {
		case string:
			auds = []string{a}
		case []any:
			for _, x := range a {
				if s, ok := x.(string); ok {
					auds = append(auds, s)
				}
			}
		}
		if !slices.ContainsFunc(auds, func(a string) bool { return slices.Contains(o.cfg.Audience, a) }) {
			return nil, fmt.Errorf("audience %q not accepted", auds)
		}
	}
	if exp, ok := claims["exp"].(float64); ok && time.Unix(int64(exp), 0).Before(time.Now()) {
		return nil, errors.New("token expired")
	}
	return claims, nil
}
