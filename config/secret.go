package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// redacted is all that printing, logging or marshalling a Secret shows.
const redacted = "[redacted]"

// maxSecretFile bounds how much of a secret file is read, so that a
// mistake such as {file: /dev/zero} fails instead of eating memory.
const maxSecretFile = 64 << 10

// UnmarshalYAML accepts a scalar (the secret itself) or a mapping with
// exactly one of the keys env and file. Env and file secrets are only
// recorded in Source here; Load reads them after decoding, so that every
// missing one is reported.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	if msg := checkSecretNode(n, "secret"); msg != "" {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, msg)}}
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode {
		*s = Secret{Value: n.Value, Source: "inline"}
		return nil
	}
	k, v := n.Content[0], n.Content[1]
	*s = Secret{Source: k.Value + ":" + v.Value}
	return nil
}

// checkSecretNode returns what is wrong with the secret's YAML node at path,
// or "". It must never include a scalar's value: it may be the secret.
func checkSecretNode(n *yaml.Node, path string) string {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.ScalarNode:
		return ""
	case yaml.MappingNode:
		if len(n.Content) != 2 {
			return path + ": must have exactly one key, env or file"
		}
		k, v := n.Content[0], n.Content[1]
		if k.Kind != yaml.ScalarNode || (k.Value != "env" && k.Value != "file") {
			return fmt.Sprintf("unknown key %q in %s; a secret is a string, {env: NAME} or {file: PATH}", k.Value, path)
		}
		if v.Kind != yaml.ScalarNode || v.Value == "" || v.ShortTag() == "!!null" {
			return fmt.Sprintf("%s.%s: must name %s", path, k.Value, map[string]string{"env": "an environment variable", "file": "a file"}[k.Value])
		}
		return ""
	}
	return path + ": must be a string, {env: NAME} or {file: PATH}"
}

// resolve reads an env or file secret into Value.
func (s *Secret) resolve(path string) error {
	kind, ref, _ := strings.Cut(s.Source, ":")
	switch kind {
	case "env":
		v, ok := os.LookupEnv(ref)
		if !ok {
			return &fieldError{path, fmt.Sprintf("environment variable %s is not set", ref)}
		}
		if v == "" {
			return &fieldError{path, fmt.Sprintf("environment variable %s is empty", ref)}
		}
		s.Value = v
	case "file":
		f, err := os.Open(ref)
		if err != nil {
			return &fieldError{path, fmt.Sprintf("secret file: %v", err)}
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
		if err != nil {
			return &fieldError{path, fmt.Sprintf("secret file: %v", err)}
		}
		if len(b) > maxSecretFile {
			return &fieldError{path, fmt.Sprintf("secret file %s is larger than %d bytes", ref, maxSecretFile)}
		}
		// Editors and `echo` add a final newline that is not part of the secret.
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return &fieldError{path, fmt.Sprintf("secret file %s is empty", ref)}
		}
		s.Value = v
	}
	return nil
}

func (c *Config) resolveSecrets() error {
	var errs []error
	resolve := func(s *Secret, path string) {
		if err := s.resolve(path); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Routing.Redis != nil {
		resolve(&c.Routing.Redis.Password, "routing.redis.password")
	}
	resolve(&c.TLS.SessionTickets.Key, "tls.session_tickets.key")
	resolve(&c.Limits.BruteForce.PasswordHashKey, "limits.brute_force.password_hash_key")
	if c.TLS.ACME != nil {
		resolve(&c.TLS.ACME.CacheKey, "tls.acme.cache_key")
	}
	if c.Admin != nil {
		resolve(&c.Admin.Token, "admin.token")
	}
	c.Auth.resolveSecrets(resolve)
	return errors.Join(errs...)
}

// String returns "[redacted]".
func (Secret) String() string { return redacted }

// GoString returns "[redacted]", for %#v.
func (Secret) GoString() string { return redacted }

// Format prints "[redacted]" for every verb, so that %d or %x of a
// Config cannot reach the Value field either.
func (Secret) Format(f fmt.State, _ rune) { io.WriteString(f, redacted) }

// LogValue keeps secrets out of log/slog output.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON writes "[redacted]", for slog's JSON handler and anyone
// dumping a Config as JSON.
func (Secret) MarshalJSON() ([]byte, error) { return json.Marshal(redacted) }

// redisFields is Redis without its methods, for Redis.Format.
type redisFields Redis

// Format prints r as fmt would, with the password redacted. Without it,
// a verb that does not suit a pointer (fmt.Sprintf("%s", cfg)) makes fmt
// print the *Redis inside Config field by field with all methods off,
// Secret.Format included.
func (r Redis) Format(f fmt.State, verb rune) {
	type Redis redisFields // keeps the type name in %#v output
	fmt.Fprintf(f, fmt.FormatString(f, verb), Redis(r))
}

// MarshalYAML writes where the secret comes from ({env: NAME} or
// {file: PATH}), "[redacted]" for an inline one, and nothing when unset.
func (s Secret) MarshalYAML() (any, error) {
	kind, ref, _ := strings.Cut(s.Source, ":")
	switch {
	case kind == "env" || kind == "file":
		return map[string]string{kind: ref}, nil
	case s.Source == "" && s.Value == "":
		return nil, nil
	}
	return redacted, nil
}

// acmeFields is ACME without its methods, for ACME.Format.
type acmeFields ACME

// Format prints a as fmt would, with the cache key redacted; see
// Redis.Format.
func (a ACME) Format(f fmt.State, verb rune) {
	type ACME acmeFields
	fmt.Fprintf(f, fmt.FormatString(f, verb), ACME(a))
}
