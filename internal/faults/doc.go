// Package faults is the bridge's fault suite: its tests build the real
// `bridge` binary, run it on loopback and drive it from outside as an
// operator or a hostile network would (SIGTERM and kill -9 under load, NATS
// stopped and restarted, slow and oversize clients, replayed and re-signed
// webhooks), then check what a sender and the store saw: every request
// answered, every 202 stored exactly once, resources given back.
//
// Every scenario is bounded in time and runs in the default `go test ./...`
// (under -race the binary is built with the race detector too). Set
// NOWBRIDGE_FAULTS_SOAK to a duration (e.g. 2m) to run the load phases that
// long instead of a couple of seconds (the chaos test keeps its rounds of
// changes going that long, killing the sync owner and a stream leader every
// eighth round), and NOWBRIDGE_FAULTS_BRIDGE to the path of a bridge binary
// to test that one instead of building it.
package faults
