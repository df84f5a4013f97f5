package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestDivergenceCollector(t *testing.T) {
	n := int64(0)
	c := NewDivergenceCollector(func() int64 { return n })
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	n = 3
	if got := testutil.ToFloat64(c); got != 3 {
		t.Errorf("cairn_step_divergences_total = %v, want 3", got)
	}
}
