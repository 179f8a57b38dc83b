package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/outbound"
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
		ClientSecret: cfg.SNClientSecret,
		RateLimit:    cfg.SNRateLimit,
		MappedFields: mappedFields(mset, mset.Tables()),
		TableParents: mset.Parents(), // the mapping's parents: where inherited fields are defined
		KnownFields:  cfg.SNKnownFields,
		Logger:       log,
		Registerer:   reg,
	})
}

// checkServiceNow runs the start-up checks of a bridge that writes to
// ServiceNow (serve, dev): credentials the instance rejects and a close
// code it does not offer stop the start with their fix. Without the
// ServiceNow settings there is nothing to check.
func (b *bridge) checkServiceNow(ctx context.Context) error {
	if b.sn == nil {
		return nil
	}
	if err := checkServiceNowAuth(ctx, b.sn, b.cfg, b.log); err != nil {
		return err
	}
	return checkCloseCodes(ctx, b.writer, b.cfg, b.log)
}

// checkServiceNowAuth gets a token and makes one authenticated read, so
// credentials the instance rejects (wrong secret, grant disabled, no OAuth
// application user) stop the start with their fix, once, instead of every
// app change retrying forever. An instance that is only unreachable or
// failing now is logged: the writeback retries when it comes back.
func checkServiceNowAuth(ctx context.Context, sn *snclient.Client, cfg config.Config, log *slog.Logger) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := sn.CheckAuth(cctx)
	if err == nil {
		_, err = sn.List(cctx, cfg.Tables[0], snclient.ListOptions{Limit: 1, Fields: []string{"sys_id"}, NoCount: true})
	}
	if err == nil {
		return nil
	}
	if snclient.IsPermanent(err) && (errors.Is(err, snclient.ErrUnauthorized) || errors.Is(err, snclient.ErrTokenExchange)) {
		return fmt.Errorf("ServiceNow at %s rejects the bridge's credentials (BRIDGE_SN_CLIENT_ID, BRIDGE_SN_CLIENT_SECRET), so no app change could be written; `bridge doctor` checks the setup: %w",
			cfg.SNInstanceURL, err)
	}
	log.Warn("ServiceNow not usable at start; the writeback and reconcile retry", "err", err)
	return nil
}

// checkCloseCodes reads the instance's close code choices of every synced
// table with a close rule. A BRIDGE_CLOSE_CODE the instance does not offer
// stops the start (every resolve would be refused); a list that cannot be
// read now is only logged: the writeback reads it again when it resolves.
func checkCloseCodes(ctx context.Context, w *outbound.Writer, cfg config.Config, log *slog.Logger) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	codes, err := w.CheckCloseCodes(cctx, cfg.Tables)
	for table, code := range codes {
		log.Info("close code for resolving writes", "table", table, "close_code", code, "configured", cfg.CloseCode != "")
	}
	if errors.Is(err, outbound.ErrCloseCode) {
		return err // it names the setting and the valid choices
	}
	if err != nil {
		log.Warn("close code choices not read at start; resolving writes read them when they need them", "err", err)
	}
	return nil
}
