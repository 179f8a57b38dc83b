package outbound

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The real parts satisfy the writeback's interfaces.
var (
	_ TableAPI = (*snclient.Client)(nil)
	_ States   = (*state.Store)(nil)
	_ Links    = (*state.Links)(nil)
	_ Mapping  = (*mapping.Set)(nil)
)
