package consume

import (
	"fmt"
	"testing"
	"time"
)

func msgOf(key string, seq uint64) tracked[string] {
	return tracked[string]{msg: fmt.Sprintf("%s#%d", key, seq), seq: seq, key: key}
}

func TestOrder_OneMessageOfAKeyAtATimeOthersFree(t *testing.T) {
	o := newOrder[string](time.Minute, 50*time.Millisecond)
	now := time.Now()
	if v, _ := o.admit(msgOf("a", 1), now); v != run {
		t.Fatalf("first message of a: %v, want run", v)
	}
	if v, _ := o.admit(msgOf("a", 2), now); v != queued {
		t.Fatalf("second message of a while the first runs: %v, want queued", v)
	}
	if v, _ := o.admit(msgOf("b", 3), now); v != run {
		t.Fatalf("message of b while a runs: %v, want run (no head-of-line blocking)", v)
	}
	if v, _ := o.admit(msgOf("", 4), now); v != run {
		t.Fatalf("message without a key: %v, want run", v)
	}
	next, ok := o.done("a")
	if !ok || next.seq != 2 {
		t.Fatalf("after a#1: next %+v %v, want a#2", next, ok)
	}
	if _, ok := o.done("a"); ok {
		t.Fatal("a has nothing more waiting")
	}
	if _, ok := o.done("b"); ok {
		t.Fatal("b has nothing waiting")
	}
	if len(o.keys) != 0 {
		t.Errorf("keys left after everything finished: %v", o.keys)
	}
}

func TestOrder_WaitingMessagesRunInStreamOrder(t *testing.T) {
	o := newOrder[string](time.Minute, 0)
	now := time.Now()
	o.admit(msgOf("a", 5), now)
	for _, seq := range []uint64{9, 7, 8} { // a redelivery can arrive after later ones
		o.admit(msgOf("a", seq), now)
	}
	var got []uint64
	for next, ok := o.done("a"); ok; next, ok = o.done("a") {
		got = append(got, next.seq)
	}
	if fmt.Sprint(got) != "[7 8 9]" {
		t.Errorf("waiting messages ran as %v, want [7 8 9]", got)
	}
}

func TestOrder_LaterMessagesComeBackAfterARetriedOne(t *testing.T) {
	gap := 50 * time.Millisecond
	o := newOrder[string](10*time.Second, gap)
	now := time.Now()
	o.admit(msgOf("a", 1), now)
	o.admit(msgOf("a", 2), now) // waiting in memory
	back, delays := o.retried("a", 1, time.Second, now)
	if len(back) != 1 || back[0].seq != 2 || delays[0] != time.Second+gap {
		t.Fatalf("retrying a#1 for 1s handed back %v after %v; want a#2 after 1s+gap", back, delays)
	}
	// a#3 arrives before a#1 is redelivered: it goes back too, to come
	// just after a#1.
	v, d := o.admit(msgOf("a", 3), now.Add(200*time.Millisecond))
	if v != later || d != 800*time.Millisecond+gap {
		t.Fatalf("a#3 during a#1's retry: %v after %v, want later after %v", v, d, 800*time.Millisecond+gap)
	}
	// Another record is not held back.
	if v, _ := o.admit(msgOf("b", 4), now.Add(200*time.Millisecond)); v != run {
		t.Fatalf("b#4 during a#1's retry: %v, want run", v)
	}
	// a#1 is redelivered and runs; a#2 arriving meanwhile waits in memory.
	at := now.Add(time.Second)
	if v, _ := o.admit(msgOf("a", 1), at); v != run {
		t.Fatalf("a#1 redelivered: %v, want run", v)
	}
	if v, _ := o.admit(msgOf("a", 2), at.Add(gap)); v != queued {
		t.Fatalf("a#2 back while a#1 runs: %v, want queued", v)
	}
	next, ok := o.done("a")
	if !ok || next.seq != 2 {
		t.Fatalf("after a#1: %+v %v, want a#2", next, ok)
	}
	if _, ok := o.done("a"); ok {
		t.Fatal("nothing else of a waits in memory")
	}
	// a#3 comes back: nothing earlier is waiting any more.
	if v, _ := o.admit(msgOf("a", 3), at.Add(gap)); v != run {
		t.Fatalf("a#3 back after a#1 and a#2: %v, want run", v)
	}
}

func TestOrder_ARetryMarkLapsesWhenItsMessageNeverComesBack(t *testing.T) {
	lapse := 2 * time.Second
	o := newOrder[string](lapse, 0)
	now := time.Now()
	o.admit(msgOf("a", 1), now)
	o.retried("a", 1, time.Second, now) // another replica takes a#1 over
	if v, _ := o.admit(msgOf("a", 2), now.Add(2*time.Second)); v != later {
		t.Fatalf("a#2 within the lapse: %v, want later", v)
	}
	if v, _ := o.admit(msgOf("a", 5), now.Add(time.Second+lapse+time.Millisecond)); v != later {
		// a#2's own mark (from being handed back) still holds a#5 back.
		t.Fatalf("a#5 behind a#2's mark: %v, want later", v)
	}
	o.sweep(now.Add(time.Hour))
	if len(o.keys) != 0 {
		t.Errorf("lapsed marks kept: %v", o.keys["a"].retrying)
	}
	if v, _ := o.admit(msgOf("a", 6), now.Add(time.Hour)); v != run {
		t.Fatalf("a#6 after every mark lapsed: %v, want run", v)
	}
}

func TestOrder_ForgetAndDrop(t *testing.T) {
	o := newOrder[string](time.Minute, 0)
	now := time.Now()
	o.admit(msgOf("a", 1), now)
	o.retried("a", 1, time.Second, now)
	o.forget("a", 1) // a#1 was dead-lettered instead of coming back
	if v, _ := o.admit(msgOf("a", 2), now); v != run {
		t.Fatalf("a#2 after a#1's mark was forgotten: %v, want run", v)
	}
	o.admit(msgOf("a", 3), now)
	o.admit(msgOf("a", 4), now)
	if w := o.waiting(); len(w) != 2 {
		t.Fatalf("waiting = %v, want a#3 and a#4", w)
	}
	rest := o.drop("a")
	if len(rest) != 2 || rest[0].seq != 3 || rest[1].seq != 4 {
		t.Fatalf("drop returned %v, want a#3, a#4", rest)
	}
	if len(o.keys) != 0 {
		t.Errorf("keys left after drop: %v", o.keys)
	}
}
