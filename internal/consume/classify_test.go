package consume

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/snclient"
)

func TestClassify(t *testing.T) {
	apiErr := func(status int) *snclient.APIError {
		return &snclient.APIError{Status: status, Method: "PATCH", Table: "incident", Message: "msg"}
	}
	withAnswer := func(e *Error, status int, body string) *Error { e.Status, e.Response = status, body; return e }
	rateLimited := apiErr(429)
	rateLimited.RetryAfter = 7 * time.Second
	forbidden := apiErr(403)
	forbidden.Hint = snclient.HintRoles
	appUser := apiErr(401)
	appUser.Hint = snclient.HintAppUser
	fieldErr := &snclient.FieldError{Table: "incident", Unknown: []string{"u_x"}, Source: "mapping, record"}
	netErr := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}

	tests := []struct {
		name string
		err  error
		want Decision
	}{
		{"nil acks", nil, Decision{Action: ActionAck}},

		// Classified by the handler.
		{"Permanent with its hint", Permanent(errors.New("no mapping"), "add a mapping"),
			Decision{Action: ActionDeadLetter, Hint: "add a mapping", Reason: ReasonOther}},
		{"Permanent wrapped again", fmt.Errorf("apply: %w", Permanent(errors.New("bad"), "h")),
			Decision{Action: ActionDeadLetter, Hint: "h", Reason: ReasonOther}},
		{"Permanent over a ServiceNow answer takes its hint and status", Permanent(forbidden, ""),
			Decision{Action: ActionDeadLetter, Hint: snclient.HintRoles, Status: 403}},
		{"Permanent with the app's answer", withAnswer(Permanent(errors.New("422"), "fix the app"), 422, `{"e":1}`),
			Decision{Action: ActionDeadLetter, Hint: "fix the app", Status: 422, Response: `{"e":1}`, Reason: ReasonOther}},
		{"RetryAfter an app 503", withAnswer(RetryAfter(errors.New("503"), 2*time.Second), 503, "busy"),
			Decision{Action: ActionRetry, Delay: 2 * time.Second, Reason: ReasonServerError, Status: 503, Response: "busy"}},
		{"RetryAfter an app 429 without a delay", withAnswer(RetryAfter(errors.New("429"), 0), 429, ""),
			Decision{Action: ActionRetry, Reason: ReasonRateLimited, Status: 429}},
		{"RetryAfter an app 408", withAnswer(RetryAfter(errors.New("408"), 0), 408, ""),
			Decision{Action: ActionRetry, Reason: ReasonNetwork, Status: 408}},
		{"RetryAfter a network error takes its reason", RetryAfter(netErr, 0),
			Decision{Action: ActionRetry, Reason: ReasonNetwork}},
		{"RetryAfter without a delay over a 429 takes the 429's", RetryAfter(rateLimited, 0),
			Decision{Action: ActionRetry, Delay: 7 * time.Second, Reason: ReasonRateLimited, Status: 429, Hint: ""}},
		{"Pause for its duration", Pause(errors.New("down"), 3*time.Second),
			Decision{Action: ActionPause, Delay: 3 * time.Second, Reason: ReasonBreakerOpen}},
		{"a classified error without a cause", &Error{Action: ActionRetry},
			Decision{Action: ActionRetry, Reason: ReasonOther}},

		// ServiceNow, through snclient.
		{"open breaker pauses for its open period", fmt.Errorf("patch: %w", &snclient.BreakerOpenError{OpenFor: 30 * time.Second}),
			Decision{Action: ActionPause, Delay: 30 * time.Second, Reason: ReasonBreakerOpen}},
		{"open breaker sentinel pauses for the default", snclient.ErrBreakerOpen,
			Decision{Action: ActionPause, Reason: ReasonBreakerOpen}},
		{"refused token exchange is retried: the change is fine", &snclient.TokenError{Status: 401, Code: "invalid_client", Hint: snclient.HintTokenRejected},
			Decision{Action: ActionRetry, Reason: ReasonAuth, Hint: snclient.HintTokenRejected}},
		{"401 with a fresh token is retried as auth", appUser,
			Decision{Action: ActionRetry, Reason: ReasonAuth, Hint: snclient.HintAppUser, Status: 401}},
		{"403 missing role dead-letters with the hint", forbidden,
			Decision{Action: ActionDeadLetter, Hint: snclient.HintRoles, Status: 403}},
		{"404 dead-letters", apiErr(404), Decision{Action: ActionDeadLetter, Status: 404}},
		{"400 dead-letters", apiErr(400), Decision{Action: ActionDeadLetter, Status: 400}},
		{"422 dead-letters", apiErr(422), Decision{Action: ActionDeadLetter, Status: 422}},
		{"429 retried after its Retry-After", fmt.Errorf("update: %w", rateLimited),
			Decision{Action: ActionRetry, Delay: 7 * time.Second, Reason: ReasonRateLimited, Status: 429}},
		{"500 retried", apiErr(500), Decision{Action: ActionRetry, Reason: ReasonServerError, Status: 500}},
		{"503 retried", apiErr(503), Decision{Action: ActionRetry, Reason: ReasonServerError, Status: 503}},
		{"409 retried", apiErr(409), Decision{Action: ActionRetry, Reason: ReasonOther, Status: 409}},
		{"408 retried as network", apiErr(408), Decision{Action: ActionRetry, Reason: ReasonNetwork, Status: 408}},
		{"425 retried", apiErr(425), Decision{Action: ActionRetry, Reason: ReasonOther, Status: 425}},
		{"field the table lacks dead-letters with the fix", fmt.Errorf("update: %w", fieldErr),
			Decision{Action: ActionDeadLetter, Hint: snclient.Hint(fieldErr)}},
		{"query the client refused dead-letters", fmt.Errorf("%w: bad value", snclient.ErrInvalidQuery),
			Decision{Action: ActionDeadLetter}},
		{"rate limited sentinel", snclient.ErrRateLimited, Decision{Action: ActionRetry, Reason: ReasonRateLimited}},
		{"closed client retried", snclient.ErrClosed, Decision{Action: ActionRetry, Reason: ReasonOther}},
		{"deadline over a 503 keeps the 503", fmt.Errorf("PATCH incident: %w (last attempt: %w)", context.DeadlineExceeded, apiErr(503)),
			Decision{Action: ActionRetry, Reason: ReasonServerError, Status: 503}},

		// NATS.
		{"NATS timeout", fmt.Errorf("state get: %w", nats.ErrTimeout), Decision{Action: ActionRetry, Reason: ReasonNATS}},
		{"NATS connection closed", nats.ErrConnectionClosed, Decision{Action: ActionRetry, Reason: ReasonNATS}},
		{"no responders", nats.ErrNoResponders, Decision{Action: ActionRetry, Reason: ReasonNATS}},
		{"JetStream no stream response", fmt.Errorf("publish: %w", jetstream.ErrNoStreamResponse), Decision{Action: ActionRetry, Reason: ReasonNATS}},
		{"JetStream API error", &jetstream.APIError{Code: 503, Description: "JetStream system temporarily unavailable"},
			Decision{Action: ActionRetry, Reason: ReasonNATS}},
		{"beyond max_payload dead-letters", fmt.Errorf("publish: %w", nats.ErrMaxPayload),
			Decision{Action: ActionDeadLetter, Hint: HintMaxPayload}},

		// The network and the context.
		{"network error", fmt.Errorf("POST app: %w", netErr), Decision{Action: ActionRetry, Reason: ReasonNetwork}},
		{"deadline", fmt.Errorf("POST app: %w", context.DeadlineExceeded), Decision{Action: ActionRetry, Reason: ReasonNetwork}},
		{"cancelled", fmt.Errorf("POST app: %w", context.Canceled), Decision{Action: ActionRetry, Reason: ReasonCanceled}},
		{"anything else is retried", errors.New("boom"), Decision{Action: ActionRetry, Reason: ReasonOther}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Classify(tt.err)
			if got != tt.want {
				t.Errorf("Classify(%v)\n got %+v\nwant %+v", tt.err, got, tt.want)
			}
		})
	}
}

func TestError_MessageIsTheCause(t *testing.T) {
	e := Permanent(errors.New("map incident/abc: value out of range"), "fix the mapping")
	if e.Error() != "map incident/abc: value out of range" {
		t.Errorf("Error() = %q, want the cause's message", e.Error())
	}
	if (&Error{Action: ActionPause}).Error() != "pause" {
		t.Errorf("an Error without a cause names its action, got %q", (&Error{Action: ActionPause}).Error())
	}
	if !errors.Is(fmt.Errorf("x: %w", RetryAfter(context.Canceled, 0)), context.Canceled) {
		t.Error("RetryAfter does not unwrap to its cause")
	}
}
