package tls

import (
	"io/fs"
	"syscall"
	"time"
)

// fileIdentity returns what os.FileInfo lacks for noticing a changed file:
// device and inode (a file renamed over the old one) and the change time (a
// chmod that makes an unreadable key readable).
func fileIdentity(fi fs.FileInfo) (dev, ino uint64, ctime int64) {
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(sys.Dev), uint64(sys.Ino), time.Unix(int64(sys.Ctim.Sec), int64(sys.Ctim.Nsec)).UnixNano()
	}
	return 0, 0, 0
}
