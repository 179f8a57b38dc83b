//go:build race

package faults

// raceEnabled: the suite runs under -race, so the bridge is built with it.
const raceEnabled = true
