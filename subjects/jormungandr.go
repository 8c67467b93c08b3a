package subjects

import (
	"fmt"
	"regexp"
)

// Jormungandr service subjects. Connecting and plain HTTP go to the queue
// group, so any replica serves them; calls on a connection handle go to the
// replica holding the connection, on subjects carrying its instance id. See
// docs/JORMUNGANDR.md.
const (
	// JormungandrService is the NATS micro service name of the network service.
	JormungandrService = "jormungandr"
	// JormungandrQueueGroup is the queue group every replica subscribes in.
	JormungandrQueueGroup = "jormungandr"
	// JormungandrPrefix prefixes every Jormungandr subject.
	JormungandrPrefix = "jormungandr"
	// JormungandrAll matches every Jormungandr subject.
	JormungandrAll = JormungandrPrefix + ".>"

	// JormungandrHTTP performs one HTTP request and answers with the response.
	JormungandrHTTP = JormungandrPrefix + ".http"
	// JormungandrWSConnect opens a WebSocket connection and answers with its handle.
	JormungandrWSConnect = JormungandrPrefix + ".ws.connect"
	// JormungandrMQTTConnect connects to an MQTT broker and answers with a handle.
	JormungandrMQTTConnect = JormungandrPrefix + ".mqtt.connect"
	// JormungandrHandlePrefix prefixes jormungandr.handle.<instance>.<op>,
	// the calls on connection handles held by one replica.
	JormungandrHandlePrefix = JormungandrPrefix + ".handle"
)

// HandleOp is an operation on a connection handle: the last token of its subject.
type HandleOp string

// The operations on connection handles. Send is WebSocket only; Publish and
// Subscribe are MQTT only.
const (
	HandleSend      HandleOp = "send"
	HandleReceive   HandleOp = "receive"
	HandlePublish   HandleOp = "publish"
	HandleSubscribe HandleOp = "subscribe"
	HandleClose     HandleOp = "close"
)

// HandleOps lists every handle operation.
var HandleOps = []HandleOp{HandleSend, HandleReceive, HandlePublish, HandleSubscribe, HandleClose}

// Valid reports whether op is a known handle operation.
func (op HandleOp) Valid() bool {
	for _, o := range HandleOps {
		if o == op {
			return true
		}
	}
	return false
}

// instanceID is the shape of a replica's instance id (a NUID, in practice).
var instanceID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidInstanceID returns an error unless id can name a Jormungandr replica:
// 1 to 64 of [A-Za-z0-9_-].
func ValidInstanceID(id string) error {
	if !instanceID.MatchString(id) {
		return fmt.Errorf("%w: instance id %q must be 1 to 64 of [A-Za-z0-9_-]", ErrInvalidToken, id)
	}
	return nil
}

// JormungandrHandle returns jormungandr.handle.<instance>.<op>, where the
// replica instance serves op on the handles it holds.
func JormungandrHandle(instance string, op HandleOp) (string, error) {
	if err := ValidInstanceID(instance); err != nil {
		return "", err
	}
	if !op.Valid() {
		return "", fmt.Errorf("%w: unknown handle operation %q", ErrInvalidToken, op)
	}
	return JormungandrHandlePrefix + "." + instance + "." + string(op), nil
}
