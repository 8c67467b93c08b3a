package streams_test

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/loki-iot/loki/devices/streams"
)

// lines is a source a board's code might write: here, a fixed text.
type lines struct{ text string }

func (l lines) Info() streams.Info {
	return streams.Info{Name: "log", Kind: "text", ContentType: "text/plain", Policy: streams.PolicyBlock, MaxChunkBytes: 4096}
}

func (l lines) Open(context.Context) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader(l.text)), nil
}

// A device's code registers its sources; the agent takes the registry
// with jotunheim.WithStreams and lists them in its manifest.
func ExampleRegistry() {
	reg := streams.NewRegistry()
	sine, _ := streams.NewSine("sine", 16000, 440)
	for _, s := range []streams.Source{sine, lines{"boot ok\n"}} {
		if err := reg.Register(s); err != nil {
			fmt.Println(err)
		}
	}
	fmt.Println(reg.Register(lines{}))
	for _, i := range reg.List() {
		fmt.Println(i.Name, i.ContentType, i.Policy)
	}
	// Output:
	// stream source already registered: "log"
	// log text/plain block
	// sine audio/L16;rate=16000;channels=1 drop
}
