// Package deploy holds no code: it is the home of the deployment files (the
// Dockerfile's companions in compose/ and kubernetes/, the NATS and mapping
// configurations). Its test parses them and checks them against the bridge's
// configuration table, since containers cannot run where the tests run.
package deploy
