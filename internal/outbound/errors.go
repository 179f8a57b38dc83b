package outbound

import (
	"errors"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/snclient"
)

// classified hands the writer's errors to the consume engine: a change
// that can never succeed as it is (permanentError) becomes
// consume.Permanent with its hint; everything else (snclient, NATS,
// network) is left to consume.Classify, the one place that decides.
func classified(err error) error {
	var pe *permanentError
	if errors.As(err, &pe) {
		ce := consume.Permanent(err, pe.hint)
		ce.Status, ce.Response = pe.status, pe.body
		return ce
	}
	return err
}

func isNotFound(err error) bool { return errors.Is(err, snclient.ErrNotFound) }
