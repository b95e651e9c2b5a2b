// Package config reads Portico's YAML configuration file.
//
// Typical use:
//
//	cfg, err := config.Load("/etc/portico/portico.yaml")
//	if err != nil {
//		log.Fatal(err) // one problem per line, each with file, line and key
//	}
//	for _, w := range cfg.Warnings() {
//		log.Print("warning: ", w)
//	}
//
// Loading is strict: an unknown or misspelt key is an error, and so is
// anything Validate refuses, because a proxy that silently ignores
// "cleartext_login_network" would fail open. Zero values are replaced by the
// defaults documented in portico.example.yaml (also available as Example),
// secrets are resolved from the environment or from files, and then the
// whole configuration is validated. All problems are reported together,
// not just the first one.
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Example is the annotated example configuration, which documents every
// key with its default and allowed values. Its certificate paths and its
// Redis password environment variable must exist for it to load.
//
//go:embed portico.example.yaml
var Example []byte

// Load reads, decodes, completes and validates the configuration file at
// path. See Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes data, a single YAML document, fills in defaults, resolves
// secrets and validates the result. Name is the file name used in error
// messages. The error, if any, joins every problem found (errors.Join), each
// formatted as "config: name:line: path: message".
func Parse(data []byte, name string) (*Config, error) {
	if name == "" {
		name = "config"
	}
	root, err := parseDocument(data, name)
	if err != nil {
		return nil, err
	}
	p := &keyChecker{name: name, pos: make(map[string]int), lines: make(map[int][]string), aliased: make(map[*yaml.Node]bool)}
	p.walk(root, configType, "", 0)
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}

	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, p.yamlError(err)
	}
	c.ApplyDefaults()

	var errs []error
	if err := c.resolveSecrets(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return &c, nil
	}
	// Reported in file order; problems without a line (missing keys) first.
	type located struct {
		line int
		err  error
	}
	var ls []located
	for _, e := range flatten(errors.Join(errs...)) {
		line, err := p.locate(e)
		ls = append(ls, located{line, err})
	}
	sort.SliceStable(ls, func(i, j int) bool { return ls[i].line < ls[j].line })
	out := make([]error, len(ls))
	for i, l := range ls {
		out[i] = l.err
	}
	return nil, errors.Join(out...)
}

// parseDocument returns the top-level mapping of the only document in data.
func parseDocument(data []byte, name string) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := dec.Decode(&doc); {
	case err == io.EOF:
		return nil, fmt.Errorf("config: %s: file is empty", name)
	case err != nil:
		return nil, fmt.Errorf("config: %s", syntaxMessage(name, err))
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		return nil, fmt.Errorf("config: %s:%d: a second YAML document starts here; the file must hold exactly one", name, next.Line)
	case err != io.EOF:
		return nil, fmt.Errorf("config: %s", syntaxMessage(name, err))
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		return nil, fmt.Errorf("config: %s: file is empty", name)
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config: %s:%d: the top level must be a mapping of keys (log:, listeners:, ...)", name, root.Line)
	}
	return root, nil
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// syntaxMessage turns "yaml: line 3: msg" into "name:3: msg".
func syntaxMessage(name string, err error) string {
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		return name + ":" + m[1] + ": " + m[2]
	}
	return name + ": " + strings.TrimPrefix(err.Error(), "yaml: ")
}

var (
	configType = reflect.TypeOf(Config{})
	secretType = reflect.TypeOf(Secret{})
)

// keyChecker walks the YAML tree against the Go types, so that unknown keys
// are reported with the path of the mapping they are in, which yaml's own
// KnownFields error ("field x not found in type config.Listener") lacks.
// It also remembers where each path is, to give validation errors a line.
type keyChecker struct {
	name  string
	errs  []error
	pos   map[string]int   // path -> line
	lines map[int][]string // line -> paths defined on it
	// aliased holds the anchors already checked.
	aliased map[*yaml.Node]bool
}

func (p *keyChecker) record(path string, line int) {
	if _, ok := p.pos[path]; !ok {
		p.pos[path] = line
	}
	// A duplicate key is on a line of its own, for yaml's error about it.
	p.lines[line] = append(p.lines[line], path)
}

func (p *keyChecker) errorf(line int, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("config: %s:%d: %s", p.name, line, fmt.Sprintf(format, args...)))
}

// maxDepth stops alias loops; the real schema is 5 levels deep.
const maxDepth = 32

func (p *keyChecker) walk(n *yaml.Node, t reflect.Type, path string, depth int) {
	if depth > maxDepth {
		p.errorf(n.Line, "%s: nested too deeply", path)
		return
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		// Each anchor is checked once, where it is first used, so that
		// nested aliases ("billion laughs") cannot make this walk explode.
		if p.aliased[n.Alias] {
			return
		}
		p.aliased[n.Alias] = true
		n = n.Alias
		depth++
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == secretType {
		if msg := checkSecretNode(n, path); msg != "" {
			p.errorf(n.Line, "%s", msg)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return // a type error, reported by the decoder
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if p.merge(k, v, t, path, depth) {
				continue
			}
			ft, ok := fields[k.Value]
			if !ok || k.Kind != yaml.ScalarNode {
				p.errorf(k.Line, "unknown key %q %s%s", k.Value, where(path), suggest(k.Value, fields))
				continue
			}
			sub := join(path, k.Value)
			p.record(sub, k.Line)
			p.walk(v, ft, sub, depth+1)
		}
	case reflect.Map:
		// Map keys are data (domain names), not schema: they are only
		// recorded, as path["key"], so that their errors get a line.
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if p.merge(k, v, t, path, depth) {
				continue
			}
			sub := path + "[" + strconv.Quote(k.Value) + "]"
			p.record(sub, k.Line)
			p.walk(v, t.Elem(), sub, depth+1)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return
		}
		for i, item := range n.Content {
			sub := path + "[" + strconv.Itoa(i) + "]"
			p.record(sub, item.Line)
			p.walk(item, t.Elem(), sub, depth+1)
		}
	}
}

// merge walks the mappings that a merge key ("<<") brings in at this
// level, and reports whether k was one.
func (p *keyChecker) merge(k, v *yaml.Node, t reflect.Type, path string, depth int) bool {
	if k.Kind != yaml.ScalarNode || k.Value != "<<" || (k.Tag != "" && k.ShortTag() != "!!merge") {
		return false
	}
	if v.Kind == yaml.SequenceNode {
		for _, m := range v.Content {
			p.walk(m, t, path, depth+1)
		}
	} else {
		p.walk(v, t, path, depth+1)
	}
	return true
}

func where(path string) string {
	if path == "" {
		return "at top level"
	}
	return "in " + path
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// yamlFields maps the yaml keys of struct type t to their types, following
// ",inline" fields.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	m := make(map[string]reflect.Type)
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") {
			for k, v := range yamlFields(f.Type) {
				m[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = f.Type
	}
	return m
}

// suggest proposes the nearest known key, or lists them all.
func suggest(key string, fields map[string]reflect.Type) string {
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	best, bestD := "", 3
	for _, k := range names {
		if d := distance(strings.ToLower(key), k); d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf("; did you mean %q?", best)
	}
	return "; known keys: " + strings.Join(names, ", ")
}

// distance is the Levenshtein distance, good enough for key names.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var typeHints = []struct{ typ, hint string }{
	{"into time.Duration", " (want a duration such as 500ms, 30s, 5m or 1h)"},
	{"into int", " (want a whole number)"},
	{"into bool", " (want true or false)"},
	{"into []", " (want a list)"},
}

// yamlError reformats a decoding error: "line N: msg" becomes
// "config: name:N: path: msg", one error per problem.
func (p *keyChecker) yamlError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("config: %s", syntaxMessage(p.name, err))
	}
	errs := make([]error, 0, len(te.Errors))
	for _, s := range te.Errors {
		m := yamlLine.FindStringSubmatch(s)
		if m == nil {
			errs = append(errs, fmt.Errorf("config: %s: %s", p.name, s))
			continue
		}
		msg := m[2]
		for _, h := range typeHints {
			if strings.Contains(msg, h.typ) {
				msg += h.hint
				break
			}
		}
		line, _ := strconv.Atoi(m[1])
		if path := p.deepest(line); path != "" {
			msg = path + ": " + msg
		}
		errs = append(errs, fmt.Errorf("config: %s:%s: %s", p.name, m[1], msg))
	}
	return errors.Join(errs...)
}

// deepest returns the path of the innermost value starting on line, or ""
// when the line holds unrelated paths (a flow mapping, say).
func (p *keyChecker) deepest(line int) string {
	best := ""
	for _, path := range p.lines[line] {
		switch {
		case strings.HasPrefix(path, best):
			best = path
		case !strings.HasPrefix(best, path):
			return ""
		}
	}
	return best
}

// locate adds the file name and, when known, the line to a field error.
func (p *keyChecker) locate(err error) (int, error) {
	var fe *fieldError
	if !errors.As(err, &fe) {
		return 0, err
	}
	// A missing key has no line of its own: use its parent's.
	for path := fe.Path; path != ""; path = parent(path) {
		if line, ok := p.pos[path]; ok {
			return line, fmt.Errorf("config: %s:%d: %s: %s", p.name, line, fe.Path, fe.Msg)
		}
	}
	return 0, fmt.Errorf("config: %s: %s: %s", p.name, fe.Path, fe.Msg)
}

// parent strips the last element from a path: "a.b[1]" -> "a.b" -> "a".
func parent(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// flatten undoes nested errors.Join.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

// fieldError is a problem with the value at Path.
type fieldError struct {
	Path string
	Msg  string
}

func (e *fieldError) Error() string { return "config: " + e.Path + ": " + e.Msg }
