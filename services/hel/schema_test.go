package hel_test

import (
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/schematest"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/hel"
)

// TestSchema: Hel's JSON reply bodies are the messages in proto/loki/v1/hel.proto.
func TestSchema(t *testing.T) {
	// Not UTC: Hel reports file times in the host's zone.
	now := time.Date(2026, 12, 1, 9, 0, 0, 123, time.FixedZone("CET", 3600))
	schematest.Check(t, hel.KeyList{Keys: []string{"a"}}, &lokiv1.HelKeyList{})
	schematest.Check(t, hel.History{Entries: []hel.HistoryEntry{{Revision: 3, Op: "put", Created: now, ContentType: hel.ContentJSON, Data: []byte("1")}}},
		&lokiv1.HelHistory{})
	obj := hel.ObjectInfo{Bucket: "fw", Name: "image.bin", Description: "v2", Size: 1 << 40, Chunks: 9, SHA256: "ab", Modified: now}
	schematest.Check(t, obj, &lokiv1.HelObjectInfo{})
	schematest.Check(t, hel.ObjectList{Objects: []hel.ObjectInfo{obj}}, &lokiv1.HelObjectList{})
	fi := hel.FileInfo{Name: "a.txt", Kind: "file", Size: 3, Modified: now}
	schematest.Check(t, fi, &lokiv1.HelFileInfo{})
	schematest.Check(t, hel.FileList{Entries: []hel.FileInfo{fi}}, &lokiv1.HelFileList{})
}
