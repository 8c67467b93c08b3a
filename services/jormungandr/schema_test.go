package jormungandr_test

import (
	"testing"

	"github.com/loki-iot/loki/internal/schematest"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jormungandr"
)

// TestSchema: Jörmungandr's JSON bodies are the messages in
// proto/loki/v1/jormungandr.proto.
func TestSchema(t *testing.T) {
	hdrs := map[string]string{"accept": "application/json"}
	hosts := []string{"api.example.com"}
	schematest.Check(t, jormungandr.HTTPRequest{Method: "POST", URL: "https://api.example.com/x", Headers: hdrs, Body: []byte("{}"), Hosts: hosts},
		&lokiv1.JormungandrHTTPRequest{})
	schematest.Check(t, jormungandr.HTTPResponse{Status: 200, Headers: hdrs, Body: []byte("ok"), URL: "https://api.example.com/x"},
		&lokiv1.JormungandrHTTPResponse{})
	schematest.Check(t, jormungandr.WSConnectRequest{URL: "wss://api.example.com/ws", Headers: hdrs, Reconnect: true, Hosts: hosts},
		&lokiv1.JormungandrWSConnectRequest{})
	schematest.Check(t, jormungandr.MQTTConnectRequest{Broker: "tcp://127.0.0.1:1883", ClientID: "c", Username: "u", Password: "p", Hosts: hosts, Topics: []string{"readings/#"}},
		&lokiv1.JormungandrMQTTConnectRequest{})
	schematest.Check(t, jormungandr.Handle{Instance: "i", ID: "h", Kind: "mqtt"}, &lokiv1.JormungandrHandle{})
	schematest.Check(t, jormungandr.HandleRequest{ID: "h", Data: []byte("x"), Binary: true, Topic: "a/b", QoS: 1, Retain: true, Wait: "1s"},
		&lokiv1.JormungandrHandleRequest{})
	schematest.Check(t, jormungandr.ReceiveReply{Message: &jormungandr.Message{Data: []byte("x"), Binary: true, Topic: "a/b"}},
		&lokiv1.JormungandrReceiveReply{})
}
