package inbound

import (
	"net"
	"testing"
	"time"
)

func TestAcceptQueue_CountsConnectionsNotYetAccepted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if n, ok := acceptQueue(ln); !ok || n != 0 {
		t.Fatalf("idle listener: queue %d (readable %v), want 0", n, ok)
	}
	for range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	waitFor(t, "3 connections in the accept queue", 5*time.Second, func() bool { n, _ := acceptQueue(ln); return n == 3 })
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n, _ := acceptQueue(ln); n != 2 {
		t.Errorf("after one accept: queue %d, want 2", n)
	}
	if _, ok := acceptQueue(struct{ net.Listener }{ln}); ok {
		t.Error("a listener hiding its socket reported a queue length")
	}
}
