//go:build !linux

package inbound

import "net"

// acceptQueue cannot read the kernel's accept queue here; the drain relies
// on no connection having been accepted for a while instead.
func acceptQueue(net.Listener) (int, bool) { return 0, false }
