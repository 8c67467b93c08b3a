package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/loki-iot/loki/client"
	"google.golang.org/grpc/status"
)

// A controller runs a tool on the gateway that `loki up` starts on
// 127.0.0.1:50051.
func Example() {
	c, err := client.Dial("127.0.0.1:50051", client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// The deadline bounds the script too: Loki stops it when the call ends.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	sum, execID, err := c.Execute(ctx, "add", map[string]any{"a": 1, "b": 2})
	if err != nil {
		log.Fatalf("%s (%s): %s", status.Code(err), client.FaultCode(err), status.Convert(err).Message())
	}
	fmt.Println(sum, execID)
}

// Streaming prints each value the script passes to emit(), then the result.
func ExampleClient_Stream() {
	c, err := client.Dial("127.0.0.1:50051", client.WithInsecure(), client.WithToken("s3cret"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	result, _, err := c.Stream(context.Background(), "count", map[string]any{"n": 3},
		func(seq uint64, v any) error {
			fmt.Println(seq, v)
			return nil
		})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(result)
}

// Watching failures of every tool.
func ExampleClient_WatchEvents() {
	c, err := client.Dial("127.0.0.1:50051", client.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	w, err := c.WatchEvents(context.Background(), "", "failed")
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	for {
		ev, err := w.Recv()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(ev.GetTool(), ev.GetErrorCode(), ev.GetErrorMessage())
	}
}
