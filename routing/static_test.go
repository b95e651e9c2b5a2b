package routing

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestStatic(t *testing.T) {
	ctx := context.Background()
	mx1 := &Backend{Name: "mx1", Addr: "127.0.0.1:143"}
	s := NewStatic(map[string]*Backend{"Alice@Example.com": mx1, "nil@example.com": nil})
	if b, err := s.Lookup(ctx, "alice@example.com"); err != nil || b != mx1 {
		t.Fatalf("Lookup = %v, %v", b, err)
	}
	for _, u := range []string{"bob@example.com", "", "nil@example.com", "*"} {
		if _, err := s.Lookup(ctx, u); !errors.Is(err, ErrNotFound) {
			t.Errorf("Lookup(%q) = %v, want ErrNotFound", u, err)
		}
	}
	if s.Len() != 1 {
		t.Errorf("Len = %d", s.Len())
	}
	var zero Static
	if _, err := zero.Lookup(ctx, "alice@example.com"); !errors.Is(err, ErrNotFound) {
		t.Errorf("zero Static: %v", err)
	}
	var nilStatic *Static
	if _, err := nilStatic.Lookup(ctx, "alice@example.com"); !errors.Is(err, ErrNotFound) {
		t.Errorf("nil Static: %v", err)
	}
}

type routerFunc func(ctx context.Context, user string) (*Backend, error)

func (f routerFunc) Lookup(ctx context.Context, user string) (*Backend, error) { return f(ctx, user) }

func TestChain(t *testing.T) {
	ctx := context.Background()
	mx1 := &Backend{Name: "mx1"}
	mx2 := &Backend{Name: "mx2"}
	boom := errors.New("redis down")
	called := 0
	counting := routerFunc(func(context.Context, string) (*Backend, error) { called++; return mx2, nil })
	failing := routerFunc(func(context.Context, string) (*Backend, error) { return nil, boom })
	nilnil := routerFunc(func(context.Context, string) (*Backend, error) { return nil, nil })
	static := NewStatic(map[string]*Backend{"alice": mx1})

	tests := []struct {
		name    string
		chain   Chain
		user    string
		want    *Backend
		wantErr error
		calls   int
	}{
		{"empty", nil, "alice", nil, ErrNotFound, 0},
		{"first wins", Chain{static, counting}, "alice", mx1, nil, 0},
		{"miss falls through", Chain{static, counting}, "bob", mx2, nil, 1},
		{"all miss", Chain{static, NewStatic(nil)}, "bob", nil, ErrNotFound, 0},
		{"failure stops", Chain{static, failing, counting}, "bob", nil, boom, 0},
		{"failure after hit ignored", Chain{static, failing}, "alice", mx1, nil, 0},
		{"nil entries skipped", Chain{nil, static}, "alice", mx1, nil, 0},
		{"nil answer is a miss", Chain{nilnil, counting}, "bob", mx2, nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			called = 0
			b, err := tt.chain.Lookup(ctx, tt.user)
			if b != tt.want {
				t.Errorf("backend = %v, want %v", b, tt.want)
			}
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if errors.Is(tt.wantErr, boom) && errors.Is(err, ErrNotFound) {
				t.Errorf("a failure became ErrNotFound: %v", err)
			}
			if called != tt.calls {
				t.Errorf("later router called %d times, want %d", called, tt.calls)
			}
		})
	}
}

func BenchmarkStaticLookup(b *testing.B) {
	routes := make(map[string]*Backend)
	for i := range 10000 {
		routes[fmt.Sprintf("user%d@example.com", i)] = &Backend{Name: "mx"}
	}
	routes["alice@example.com"] = &Backend{Name: "mx1"}
	s := NewStatic(routes)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Lookup(ctx, "alice@example.com"); err != nil {
			b.Fatal(err)
		}
	}
}
