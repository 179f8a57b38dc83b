package snclient

import (
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// fullJitter is exponential backoff with full jitter: each wait is uniform
// in [0, min(max, initial·2ⁿ)]. Unlike ±50 % jitter it spreads a crowd of
// clients that failed together over the whole window, so they do not come
// back in a wave (AWS Architecture Blog, "Exponential Backoff And Jitter").
type fullJitter struct {
	initial, max time.Duration
	n            int
}

var _ backoff.BackOff = (*fullJitter)(nil)

func newFullJitter(initial, max time.Duration) *fullJitter {
	return &fullJitter{initial: initial, max: max}
}

func (b *fullJitter) NextBackOff() time.Duration {
	ceil := b.initial
	for i := 0; i < b.n && ceil < b.max; i++ {
		ceil *= 2
	}
	ceil = min(ceil, b.max)
	b.n++
	if ceil <= 0 {
		return 0
	}
	return rand.N(ceil + 1)
}

func (b *fullJitter) Reset() { b.n = 0 }
