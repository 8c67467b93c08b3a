package jotunheim

// StreamCtlTopic is the topic the session subscribes for stream controls.
func (a *Agent) StreamCtlTopic() string { return a.streamCtlTopic() }

// CloseStreams ends the agent's open streams, as Run does when it returns.
func (a *Agent) CloseStreams() { a.closeStreams() }
