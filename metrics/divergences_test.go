package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestDivergenceCollector(t *testing.T) {
	n := int64(0)
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewDivergenceCollector(func() int64 { return n }))
	n = 3
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "cairn_step_divergences_total" || mfs[0].GetMetric()[0].GetCounter().GetValue() != 3 {
		t.Errorf("gathered %v, want cairn_step_divergences_total 3", mfs)
	}
}
