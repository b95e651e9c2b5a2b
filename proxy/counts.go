package proxy

// Counts returns how many accept loops (Serve calls) run and how many
// sessions are logged in. It does O(1) work under the server's lock, so a
// watchdog may call it every few seconds at any number of sessions, and
// it blocks when that lock is wedged, which is what a watchdog wants to
// notice.
func (s *Server) Counts() (serving, loggedIn int) {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.listeners), len(s.spliced)
}
