package nowbridge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http/httptest"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/webhook"
	"github.com/nowbridge/nowbridge/sdk/nowbridge"
)

// The examples run against a real in-process JetStream server with the
// bridge's streams, standing in for `bridge dev`'s embedded server at
// nats://127.0.0.1:4222. Where the bridge would send something, the
// bridge's own code sends it (its NATS and HTTP appliers).

// exampleBridge starts the server and returns a JetStream context on it
// and a function that stops both.
func exampleBridge() (jetstream.JetStream, func()) {
	dir, err := os.MkdirTemp("", "nowbridge-example")
	if err != nil {
		log.Fatal(err)
	}
	s, err := server.NewServer(natstest.Options(dir))
	if err != nil {
		log.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		log.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		log.Fatal(err)
	}
	if _, err := js.Stream(ctx, events.StreamResults); errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: events.StreamResults, Subjects: []string{events.ResultsSubjects}}); err != nil {
			log.Fatal(err)
		}
	}
	return js, func() {
		nc.Close()
		s.Shutdown()
		s.WaitForShutdown()
		_ = os.RemoveAll(dir)
	}
}

// quiet keeps the SDK's warnings out of the examples' output.
var quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

// The app creates a ticket: Publish stores it in APP_EVENTS, where the
// bridge's writeback picks it up. Publishing the same version again (a
// retry after a timeout) is stored once.
func ExampleClient_Publish() {
	js, stop := exampleBridge()
	defer stop()
	client, err := nowbridge.New(js, nowbridge.Config{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	change := nowbridge.AppChange{
		ExternalID: "TCK-1042",
		Version:    7, // the ticket's row version in the app's database
		Fields:     nowbridge.Fields{"title": "Email down", "status": "new", "priority": "2"},
	}
	for range 2 {
		p, err := client.Publish(ctx, "ticket", change)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(p.Subject, p.MsgID, "duplicate:", p.Duplicate)
	}
	_, err = client.Publish(ctx, "ticket", nowbridge.AppChange{ExternalID: "TCK-1042", Version: 6})
	fmt.Println(errors.Is(err, nowbridge.ErrVersionNotNewer))
	// Output:
	// app.ticket.upsert ticket:TCK-1042:7:upsert duplicate: false
	// app.ticket.upsert ticket:TCK-1042:7:upsert duplicate: true
	// true
}

// ServiceNow changed an incident: the bridge's NATS applier published its
// versions on bridge.apply.ticket.*, and the app applies them. The version
// guard skips the older version that arrives late.
func ExampleClient_Consume() {
	js, stop := exampleBridge()
	defer stop()
	bridge := &apply.NATSApplier{JS: js}
	for _, v := range []int64{4, 3} {
		msg := &apply.Message{Entity: "ticket", Action: events.ActionUpdate, MsgID: events.ApplyMsgID("incident", "9d385017c611228701d22104cc95c371", v, events.ActionUpdate),
			AppChange: events.AppChange{ExternalID: "TCK-1042", SysID: "9d385017c611228701d22104cc95c371", Number: "INC0010001", Table: "incident",
				Version: v, Fields: events.Fields{"title": fmt.Sprintf("Email down (v%d)", v), "status": "in_progress"}}}
		if _, err := bridge.Apply(context.Background(), msg); err != nil {
			log.Fatal(err)
		}
	}

	client, err := nowbridge.New(js, nowbridge.Config{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = client.Consume(ctx, func(ctx context.Context, m *nowbridge.ApplyMessage) error {
		fmt.Printf("%s %s %s version %d: %s is %s\n", m.Action, m.ExternalID, m.Number, m.Version, m.Fields["title"], m.Fields["status"])
		return nil // only now is the message acknowledged
	}, nowbridge.ConsumeOptions{Durable: "helpdesk"})
	fmt.Println("stopped:", err)
	// Output:
	// update TCK-1042 INC0010001 version 4: Email down (v4) is in_progress
	// stopped: <nil>
}

// The app follows the outcome of its changes, to show each ticket's sync
// state with the ServiceNow number and link, or why it did not sync.
func ExampleClient_Results() {
	js, stop := exampleBridge()
	defer stop()
	// What the bridge's writeback publishes for two changes of TCK-1042.
	zero := int64(0)
	for _, r := range []nowbridge.Result{
		{ExternalID: "TCK-1042", Version: 7, Entity: "ticket", Action: "upsert", Outcome: nowbridge.OutcomeCreated, Table: "incident",
			SysID: "9d385017c611228701d22104cc95c371", Number: "INC0010001", SysModCount: &zero,
			URL: events.RecordURL("https://dev12345.service-now.com", "incident", "9d385017c611228701d22104cc95c371")},
		{ExternalID: "TCK-1042", Version: 8, Entity: "ticket", Action: "upsert", Outcome: nowbridge.OutcomeRejected, Table: "incident",
			SysID: "9d385017c611228701d22104cc95c371", Number: "INC0010001",
			Error: &nowbridge.ResultError{Status: 403, Message: "Operation Failed", Detail: "Data Policy Exception: Resolution code is mandatory", DeadLettered: true}},
	} {
		body, _ := json.Marshal(r)
		if _, err := js.Publish(context.Background(), events.ResultSubject(r.Entity, r.Outcome), body,
			jetstream.WithMsgID(events.ResultMsgID(r.Entity, r.ExternalID, r.Version, r.Outcome))); err != nil {
			log.Fatal(err)
		}
	}

	client, err := nowbridge.New(js, nowbridge.Config{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = client.Results(ctx, func(ctx context.Context, r *nowbridge.Result) error {
		switch r.Outcome {
		case nowbridge.OutcomeRejected:
			fmt.Printf("%s v%d rejected: %s (%s)\n", r.ExternalID, r.Version, r.Error.Message, r.Error.Detail)
		case nowbridge.OutcomeRetrying:
			fmt.Printf("%s v%d pending\n", r.ExternalID, r.Version)
		default:
			fmt.Printf("%s v%d %s: %s %s\n", r.ExternalID, r.Version, r.Outcome, r.Number, r.URL)
		}
		return nil
	}, nowbridge.ResultsOptions{Durable: "helpdesk-results"})
	// Output:
	// TCK-1042 v7 created: INC0010001 https://dev12345.service-now.com/nav_to.do?uri=incident.do?sys_id=9d385017c611228701d22104cc95c371
	// TCK-1042 v8 rejected: Operation Failed (Data Policy Exception: Resolution code is mandatory)
}

// With the HTTP applier (BRIDGE_APPLIER=http), the bridge POSTs each
// version to the app, signed with BRIDGE_APPLY_SECRET. The receiver checks
// the signature and answers as the bridge expects; setting ExternalID links
// an incident created in ServiceNow to the app's new ticket.
func ExampleNewApplyReceiver() {
	secret := "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" // BRIDGE_APPLY_SECRET
	receiver, err := nowbridge.NewApplyReceiver(nowbridge.ReceiverConfig{Secrets: []string{secret}, Logger: quiet},
		func(ctx context.Context, m *nowbridge.ApplyMessage) error {
			if m.ExternalID == "" { // created in ServiceNow: the app creates its ticket
				m.ExternalID = "TCK-2001"
			}
			fmt.Printf("%s %s version %d -> %s\n", m.Action, m.Number, m.Version, m.ExternalID)
			return nil
		})
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewServer(receiver) // the app mounts it at BRIDGE_APPLY_URL's path
	defer srv.Close()

	// The bridge's HTTP applier posting an incident created in ServiceNow.
	key, _ := webhook.ParseSecret(secret)
	bridge := apply.NewHTTPApplier(srv.URL, key, 5*time.Second, 1)
	defer bridge.CloseIdleConnections()
	res, err := bridge.Apply(context.Background(), &apply.Message{Entity: "ticket", Action: events.ActionInsert,
		MsgID:     events.ApplyMsgID("incident", "46d44a5dc611228701ee5c06c2dd4b59", 0, events.ActionInsert),
		AppChange: events.AppChange{SysID: "46d44a5dc611228701ee5c06c2dd4b59", Number: "INC0010002", Table: "incident", Fields: events.Fields{"title": "VPN drops"}}})
	fmt.Println("the bridge links", res.ExternalID, err)
	// Output:
	// insert INC0010002 version 0 -> TCK-2001
	// the bridge links TCK-2001 <nil>
}
