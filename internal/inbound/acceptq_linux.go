package inbound

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// tcpListen is TCP_LISTEN of the kernel's tcp_states.h.
const tcpListen = 10

// acceptQueue reports how many connections the kernel has completed on ln
// that nobody has accepted yet (what `ss -lnt` shows as Recv-Q): for a
// listening socket, Linux's TCP_INFO carries that count in tcpi_unacked.
// Closing a listener resets every one of them, so the drain closes it only
// when this is zero. ok is false when the count cannot be read.
func acceptQueue(ln net.Listener) (n int, ok bool) {
	sc, isSC := ln.(syscall.Conn)
	if !isSC {
		return 0, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var ierr error
	if err := raw.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || ierr != nil || info == nil || info.State != tcpListen {
		return 0, false
	}
	return int(info.Unacked), true
}
