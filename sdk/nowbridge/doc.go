// Package nowbridge is the Go SDK for apps synced with ServiceNow by the
// nowbridge bridge over NATS JetStream. It publishes the app's changes
// (Client.Publish), applies ServiceNow's changes to the app one record at a
// time with a version guard and acknowledgement after the handler
// (Client.Consume, or NewApplyReceiver behind the bridge's HTTP applier),
// and follows the outcome of every change the app sent (Client.Results:
// created with the INC number and link, rejected with ServiceNow's reason).
//
// The messages are the bridge's own types (package wire, aliased here), so
// the SDK and the bridge cannot disagree about the wire format. The
// contract, with its ordering and idempotency rules, is in the repository's
// docs/integrating.md.
//
// A minimal app:
//
//	nc, _ := nats.Connect("nats://127.0.0.1:4222") // the bridge's JetStream
//	js, _ := jetstream.New(nc)
//	client, _ := nowbridge.New(js, nowbridge.Config{})
//
//	// The app's side: a ticket was created or edited.
//	pub, err := client.Publish(ctx, "ticket", nowbridge.AppChange{
//		ExternalID: "TCK-1042",
//		Fields:     nowbridge.Fields{"title": "Email down", "priority": "2"},
//	})
//
//	// ServiceNow's side: an incident changed.
//	go client.Consume(ctx, func(ctx context.Context, m *nowbridge.ApplyMessage) error {
//		return db.UpsertTicket(ctx, m.ExternalID, m.Number, m.Fields)
//	}, nowbridge.ConsumeOptions{Durable: "helpdesk"})
//
//	// The outcome of each change: the INC number and link, or why not.
//	go client.Results(ctx, func(ctx context.Context, r *nowbridge.Result) error {
//		return db.SetSyncState(ctx, r.ExternalID, r.Version, r.Outcome, r.Number, r.URL, r.Error)
//	}, nowbridge.ResultsOptions{Durable: "helpdesk-results"})
package nowbridge
