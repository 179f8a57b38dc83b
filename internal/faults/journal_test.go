package faults

import (
	"syscall"
	"testing"
	"time"
)

// A comment (a journal entry) sent with an app change whose PATCH
// ServiceNow committed just before the bridge was killed: redelivered to
// the restarted bridge, the change must not append the comment again.
func TestWriteback_KilledMidWriteJournalEntryNotDuplicated(t *testing.T) {
	sn := newSNFront(t)
	b := startBridge(t, "", sn.env())
	a := connectApp(t, b.NATSURL)
	a.publish("TCK-J1", 1, map[string]string{"title": "j1", "status": "new"})
	a.waitWritebackIdle(30 * time.Second)
	j1 := sn.byCorrelation()["TCK-J1"]
	if len(j1) != 1 {
		t.Fatalf("TCK-J1: %d incidents, want 1", len(j1))
	}
	id := j1[0]["sys_id"]
	committed, killed := make(chan struct{}, 1), make(chan struct{})
	sn.setKill(func(w snWrite, done bool) bool {
		if w.Method != "PATCH" || w.SysID != id || w.Fields["comments"] != "note 42" {
			return false
		}
		if done {
			committed <- struct{}{}
			<-killed
		}
		return true
	})
	a.publish("TCK-J1", 2, map[string]string{"title": "j1", "status": "in_progress", "comment": "note 42"})
	select {
	case <-committed:
	case <-time.After(30 * time.Second):
		t.Fatal("the PATCH did not reach ServiceNow")
	}
	b.signal(syscall.SIGKILL)
	b.wait(10 * time.Second)
	sn.setKill(nil)
	close(killed)
	env := sn.env()
	env["BRIDGE_WRITEBACK_ACK_WAIT"] = "5s"
	b = startBridge(t, b.DataDir, env)
	a = connectApp(t, b.NATSURL)
	a.waitWritebackIdle(45 * time.Second)
	n := 0
	for _, e := range sn.sim.Journal(id, "comments") {
		if e.Value == "note 42" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("TCK-J1 has the comment %d times, want once (PATCHes with it committed: %d)", n,
			sn.written(func(w snWrite) bool { return w.SysID == id && w.Fields["comments"] == "note 42" }))
	}
}
