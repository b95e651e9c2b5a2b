//go:build !linux

package proxy

import (
	"errors"
	"syscall"
)

// Without epoll, every spliced session keeps a goroutine per direction.
type poller struct{}

type parking struct{}

func newPoller() (*poller, error) { return nil, errors.ErrUnsupported }

func (*poller) park(*parking, syscall.RawConn, func()) error { return errors.ErrUnsupported }
func (*poller) forget(*parking)                              {}
func (*poller) close()                                       {}
