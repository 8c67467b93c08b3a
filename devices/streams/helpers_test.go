package streams_test

import (
	"github.com/loki-iot/loki/devices/wire"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
)

func protojsonChunk(c *jv1.StreamChunk) ([]byte, error) { return wire.Encode(c) }
