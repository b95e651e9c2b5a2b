package loadtest

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// PatternUsers expands "%d" in name and password with 1..n, e.g.
// PatternUsers("user%d@example.test", "pw%d", 300) gives user1 to
// user300. Without "%d" in name it returns the one user.
func PatternUsers(name, password string, n int) []User {
	if !strings.Contains(name, "%d") {
		return []User{{Name: name, Password: password}}
	}
	users := make([]User, 0, n)
	for i := 1; i <= n; i++ {
		s := strconv.Itoa(i)
		users = append(users, User{Name: strings.ReplaceAll(name, "%d", s), Password: strings.ReplaceAll(password, "%d", s)})
	}
	return users
}

// ReadUsers reads "user:password" lines; the password is everything after
// the first colon. Blank lines and lines starting with '#' are skipped.
func ReadUsers(r io.Reader) ([]User, error) {
	var users []User
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, pass, ok := strings.Cut(line, ":")
		if !ok || name == "" {
			// The line may hold a password: say where, not what.
			return nil, fmt.Errorf("loadtest: users line %d: want user:password", n)
		}
		users = append(users, User{Name: name, Password: pass})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("loadtest: read users: %w", err)
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("loadtest: users file has no user:password line")
	}
	return users, nil
}
