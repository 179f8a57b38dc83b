package dlq

import (
	"context"
	"strconv"
	"testing"
	"time"
)

func TestList_ReadsEveryDeadLetterAtOnce(t *testing.T) {
	js := setup(t)
	ctx := context.Background()
	const n = 600 // more than one batch of 256
	for i := range n {
		pipeline := "writeback"
		if i%3 == 0 {
			pipeline = "apply"
		}
		deadLetter(t, js, pipeline, "TCK-"+strconv.Itoa(i), false)
	}
	start := time.Now()
	all, err := List(ctx, js, "")
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != n {
		t.Fatalf("List returned %d dead letters, want all %d", len(all), n)
	}
	for i := 1; i < len(all); i++ {
		if all[i].Seq <= all[i-1].Seq {
			t.Fatalf("dead letters out of order at %d: %d after %d", i, all[i].Seq, all[i-1].Seq)
		}
	}
	apply, err := List(ctx, js, "apply")
	if err != nil || len(apply) != n/3 {
		t.Fatalf("List(apply) = %d, %v; want %d", len(apply), err, n/3)
	}
	if none, err := List(ctx, js, "results"); err != nil || len(none) != 0 {
		t.Fatalf("List(results) with none of that pipeline = %d, %v; want none and no error", len(none), err)
	}
	t.Logf("listed %d dead letters in %v", n, took.Round(time.Millisecond))
}
