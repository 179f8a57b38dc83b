package dlq

import (
	"context"
	"testing"
)

func TestPurgeThrough_LeavesDeadLettersThatArrivedAfterTheConfirmedOne(t *testing.T) {
	js := setup(t)
	ctx := context.Background()
	first := deadLetter(t, js, "writeback", "TCK-1", false)
	confirmed := deadLetter(t, js, "writeback", "TCK-2", false)
	apply := deadLetter(t, js, "apply", "TCK-3", false)
	later := deadLetter(t, js, "writeback", "TCK-4", false)

	n, err := PurgeThrough(ctx, js, "writeback", confirmed)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("purged %d, want 2 (the writeback's dead letters %d and %d)", n, first, confirmed)
	}
	left, err := List(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, e := range left {
		seqs = append(seqs, e.Seq)
	}
	if len(seqs) != 2 || seqs[0] != apply || seqs[1] != later {
		t.Fatalf("left %v, want %d (another pipeline's) and %d (arrived after the confirmed %d)", seqs, apply, later, confirmed)
	}
}
