package config

// OAuth configures XOAUTH2 and OAUTHBEARER logins (auth.oauth).
// Placeholder: its keys, defaults and checks are filled in by the OAuth
// work, in this file only, so that the auth: skeleton (auth.go) and it do
// not conflict. Without auth.oauth tokens are passed to the backend.
type OAuth struct{}

func (o *OAuth) applyDefaults() {}

func (o *OAuth) validate(v *validator, p string) {}

func (o *OAuth) resolveSecrets(resolve func(*Secret, string), p string) {}
