package gateway_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/loki-iot/loki/gateway"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// BenchmarkHotRegister measures how long a tool registered over NATS takes
// to show up as a new Script_<tool> request message in the gateway's server
// reflection: from sending Register to a fresh reflection stream listing
// the new revision's field. Polling adds a reflection round trip, so this
// is an upper bound. The gateway's target is one second; ns/op is the
// mean, worst-ms the slowest.
func BenchmarkHotRegister(b *testing.B) {
	e := start(b, gateway.Config{})
	conn := e.dial(b).Conn()
	lc := loki.NewClient(e.nc)
	ctx := ctxT(b)
	var worst time.Duration
	i := 0
	for b.Loop() {
		i++
		field := fmt.Sprintf("p%d", i)
		tool := &lokiv1.Tool{Name: "hot", Returns: "number", Source: "return 1",
			Params: []*lokiv1.Param{{Name: field, Type: "number"}}}
		sent := time.Now()
		if _, err := lc.Register(ctx, tool); err != nil {
			b.Fatal(err)
		}
		for {
			sd, err := newReflector(b, conn).service(gateway.ScriptsService)
			if err == nil {
				if m := sd.Methods().ByName("Script_hot"); m != nil && m.Input().Fields().ByName(protoreflect.Name(field)) != nil {
					break
				}
			}
			if time.Since(sent) > 10*time.Second {
				b.Fatalf("Script_hot with field %s not in reflection after 10s (%v)", field, err)
			}
		}
		worst = max(worst, time.Since(sent))
	}
	b.ReportMetric(float64(worst.Microseconds())/1000, "worst-ms")
}
