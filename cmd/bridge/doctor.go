package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/doctor"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// doctorAliases are the short flag names of bridge doctor, normalised to
// the shared configuration's flags.
var doctorAliases = map[string]string{
	"instance-url":  "sn-instance-url",
	"client-id":     "sn-client-id",
	"client-secret": "sn-client-secret",
}

// doctorOptions are bridge doctor's own flags; the rest is the shared
// configuration.
type doctorOptions struct {
	writeProbe, asJSON, instanceSelfTest bool
	webhookURL, selfTestPath             string
	maxSkew                              time.Duration
}

const doctorLong = `doctor checks what the bridge needs from ServiceNow and prints a checklist, ✓ or ✗
with the fix for each ✗: the OAuth token exchange, an authenticated Table API
read, a read of each table in BRIDGE_TABLES (sysparm_limit=1, X-Total-Count),
every mapped field present, the clock skew from the instance's Date header, the
rate-limit headers, and with --webhook-url the bridge's receiver (reachable,
refuses unsigned requests, accepts ours). --write-probe also creates, updates
and deletes a marked record in each table (its webhooks reach the bridge).
--instance-selftest makes the instance sign and send a test webhook holding
non-ASCII text to its nowbridge.webhook_url through the update set's self-test
resource, and reports the bridge's verdict: ✓, or a secret mismatch (the property
is another secret or still encrypted), a charset mismatch, or an unreachable
bridge. The resource's path is found on the instance or taken from
--selftest-path / BRIDGE_SN_SELFTEST_PATH; the report says which.
It exits 1 when a check fails. Settings come from the usual flags, environment
and --config file; --instance-url, --client-id and --client-secret are short
for --sn-instance-url, --sn-client-id and --sn-client-secret.`

func newDoctorCmd(a *app) *cobra.Command {
	var o doctorOptions
	cmd := &cobra.Command{
		Use:   "doctor [--write-probe] [--webhook-url URL] [--instance-selftest [--selftest-path PATH]] [--json]",
		Short: "Check a ServiceNow instance's integration setup and say what to fix",
		Long:  doctorLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDoctor(cmd.Context(), a, cmd.Flags(), o)
		},
	}
	config.BindFlags(cmd.Flags())
	bindDoctorFlags(cmd.Flags(), &o)
	return cmd
}

func bindDoctorFlags(f *pflag.FlagSet, o *doctorOptions) {
	f.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if to, ok := doctorAliases[name]; ok {
			name = to
		}
		return pflag.NormalizedName(name)
	})
	f.BoolVar(&o.writeProbe, "write-probe", false, "create, update and delete a marked record in each table")
	f.StringVar(&o.webhookURL, "webhook-url", "", "the bridge's receiver, e.g. https://bridge.example.com/webhooks/servicenow")
	f.BoolVar(&o.asJSON, "json", false, "print the report as JSON")
	f.DurationVar(&o.maxSkew, "max-clock-skew", time.Minute, "largest accepted difference between the instance's clock and this host's")
	f.BoolVar(&o.instanceSelfTest, "instance-selftest", false, "make the instance sign and send a test webhook to the bridge (the update set's self-test resource)")
	f.StringVar(&o.selfTestPath, "selftest-path", "", "path of the instance's self-test resource, e.g. /api/x_1234567/nowbridge/selftest (default: BRIDGE_SN_SELFTEST_PATH, else found on the instance)")
}

// runDoctor loads the configuration, runs the checks and prints the report;
// a failed check is an error (exit 1).
func runDoctor(ctx context.Context, a *app, fs *pflag.FlagSet, o doctorOptions) error {
	cfg, err := config.Load(fs, a.getenv)
	if err != nil {
		return err
	}
	if err := cfg.RequireServiceNow(); err != nil {
		return err
	}
	secrets, err := webhook.ParseSecrets(cfg.WebhookSecrets.Reveal())
	if err != nil {
		return fmt.Errorf("BRIDGE_WEBHOOK_SECRETS: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	mset, err := loadMapping(cfg, logger)
	if err != nil {
		return err
	}
	report := doctor.Run(ctx, doctor.Options{
		InstanceURL:    cfg.SNInstanceURL,
		ClientID:       cfg.SNClientID,
		ClientSecret:   cfg.SNClientSecret,
		Tables:         cfg.Tables,
		Fields:         mappedFields(mset, cfg.Tables),
		Close:          closeRules(mset, cfg.Tables),
		CloseCode:      cfg.CloseCode,
		WriteProbe:     o.writeProbe,
		WebhookURL:     o.webhookURL,
		WebhookSecrets: secrets,
		MaxClockSkew:   o.maxSkew,
		// The self-test's path: the flag, else BRIDGE_SN_SELFTEST_PATH,
		// else the doctor finds it (selftest.go).
		InstanceSelfTest: o.instanceSelfTest,
		SelfTestPath:     firstNonEmpty(o.selfTestPath, a.getenv("BRIDGE_SN_SELFTEST_PATH")),
		Logger:           logger,
	})
	if o.asJSON {
		err = report.WriteJSON(a.stdout)
	} else {
		err = report.WriteText(a.stdout)
	}
	if err != nil {
		return err
	}
	if !report.OK {
		return fmt.Errorf("doctor: %d check(s) failed", countFailed(report))
	}
	return nil
}

// countFailed is the number of checks that failed.
func countFailed(report doctor.Report) int {
	failed := 0
	for _, c := range report.Checks {
		if c.Status == doctor.Fail {
			failed++
		}
	}
	return failed
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v = strings.TrimSpace(v); v != "" {
			return v
		}
	}
	return ""
}

// mappedFields lists, per table, every ServiceNow field its mapping reads
// or writes.
func mappedFields(mset *mapping.Set, tables []string) map[string][]string {
	out := map[string][]string{}
	for _, t := range tables {
		mt, ok := mset.ForTable(t)
		if !ok {
			continue
		}
		fields := mt.ServiceNowFields()
		for _, f := range mt.Fields {
			if !slices.Contains(fields, f.ServiceNow) {
				fields = append(fields, f.ServiceNow)
			}
		}
		slices.Sort(fields)
		out[t] = fields
	}
	return out
}

// closeRules lists the mapping's closing rule of each table that has one.
func closeRules(mset *mapping.Set, tables []string) map[string]*mapping.Close {
	out := map[string]*mapping.Close{}
	for _, t := range tables {
		if c := mset.Close(t); c != nil {
			out[t] = c
		}
	}
	return out
}
