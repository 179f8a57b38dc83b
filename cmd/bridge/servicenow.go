package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/snclient"
)

// newSNClient builds the ServiceNow client of every command that talks to
// the instance (serve and dev's writeback and reconcile, bridge reconcile,
// replay --stream app) from one place, so none forgets a setting. The
// client learns a table's fields from the mapping, a record and
// sys_dictionary where readable (the table's and its parents', as the
// mapping names them); BRIDGE_SN_KNOWN_FIELDS adds to them.
// reg may be nil.
func newSNClient(cfg config.Config, mset *mapping.Set, log *slog.Logger, reg prometheus.Registerer) (*snclient.Client, error) {
	return snclient.New(snclient.Config{
		InstanceURL:  cfg.SNInstanceURL,
		ClientID:     cfg.SNClientID,
		ClientSecret: snclient.Secret(cfg.SNClientSecret.Reveal()),
		RateLimit:    cfg.SNRateLimit,
		MappedFields: mappedFields(mset, mset.Tables()),
		TableParents: mset.Parents(), // the mapping's parents: where inherited fields are defined
		KnownFields:  cfg.SNKnownFields,
		Logger:       log,
		Registerer:   reg,
	})
}
