package gateway

// Log keys used by the gateway.
const (
	keyTool   = "tool"
	keyExecID = "exec_id"
	keyMethod = "method"
	keyErr    = "err"
	keyAddr   = "addr"
	keyDevice = "device"
)
