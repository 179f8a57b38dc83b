package wire

// Streams and subjects an app uses (the bridge's other streams are its own).
const (
	StreamApp     = "APP_EVENTS"     // the app's changes, written back to ServiceNow
	StreamApply   = "BRIDGE_APPLY"   // ServiceNow versions for the app (NATS applier)
	StreamResults = "BRIDGE_RESULTS" // the outcome of every app change

	AppSubjects     = "app.>"
	ApplySubjects   = "bridge.apply.>"
	ResultsSubjects = "bridge.result.>"
)

// HeaderMsgID is JetStream's de-duplication header. Every message of the
// contract carries one (AppMsgID, ApplyMsgID, ResultMsgID).
const HeaderMsgID = "Nats-Msg-Id"

// Headers of the HTTP applier's POST besides the Standard Webhooks ones
// (webhook-id, webhook-timestamp, webhook-signature).
const (
	HeaderIdempotencyKey = "Idempotency-Key" // the message id, as webhook-id
	HeaderEntity         = "Bridge-Entity"
	HeaderAction         = "Bridge-Action"
)

// AppSubject is "app.<entity>.<action>".
func AppSubject(entity, action string) string { return "app." + entity + "." + action }

// ApplySubject is "bridge.apply.<entity>.<action>".
func ApplySubject(entity, action string) string { return "bridge.apply." + entity + "." + action }

// ResultSubject is "bridge.result.<entity>.<outcome>".
func ResultSubject(entity, outcome string) string { return "bridge.result." + entity + "." + outcome }
