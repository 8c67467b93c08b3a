package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// funcGauges is a gauge vector whose values are read at scrape time from
// attached sources, so the hot path pays nothing for them. Sources with the
// same label values are combined (summed, or their maximum taken), so two
// replicas in one process report together rather than collide.
type funcGauges struct {
	desc *prometheus.Desc
	max  bool

	mu   sync.Mutex
	next int
	srcs map[int]funcSource
}

type funcSource struct {
	labels []string
	read   func() float64
}

func newFuncGauges(name, help string, max bool, labels ...string) *funcGauges {
	return &funcGauges{
		desc: prometheus.NewDesc(name, help, labels, nil),
		max:  max,
		srcs: map[int]funcSource{},
	}
}

// attach adds a source; detach removes it.
func (g *funcGauges) attach(read func() float64, labelValues ...string) (detach func()) {
	g.mu.Lock()
	id := g.next
	g.next++
	g.srcs[id] = funcSource{labels: labelValues, read: read}
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		delete(g.srcs, id)
		g.mu.Unlock()
	}
}

func (g *funcGauges) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g *funcGauges) Collect(ch chan<- prometheus.Metric) {
	type entry struct {
		labels []string
		v      float64
	}
	g.mu.Lock()
	srcs := make([]funcSource, 0, len(g.srcs))
	for _, s := range g.srcs {
		srcs = append(srcs, s)
	}
	g.mu.Unlock()
	byKey := map[string]*entry{}
	var order []string
	for _, s := range srcs {
		key := ""
		for _, l := range s.labels {
			key += l + "\xff"
		}
		v := s.read()
		e, ok := byKey[key]
		switch {
		case !ok:
			byKey[key] = &entry{labels: s.labels, v: v}
			order = append(order, key)
		case g.max:
			e.v = max(e.v, v)
		default:
			e.v += v
		}
	}
	for _, k := range order {
		e := byKey[k]
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, e.v, e.labels...)
	}
}
