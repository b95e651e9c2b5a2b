package config

// HTTPAuth configures an auth service spoken to as nginx's auth_http
// (auth.http). Placeholder: its keys, defaults and checks are filled in by
// the auth_http work, in this file only, so that the auth: skeleton
// (auth.go) and it do not conflict.
type HTTPAuth struct{}

func (h *HTTPAuth) applyDefaults() {}

func (h *HTTPAuth) validate(v *validator, p string) {}

func (h *HTTPAuth) resolveSecrets(resolve func(*Secret, string), p string) {}
