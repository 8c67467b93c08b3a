package subjects

// Config reload subjects: a Loki process that runs a tool config file
// (--config) publishes a protojson ConfigReload on one of them each time it
// reloads the file.
const (
	// ConfigReloadPrefix prefixes loki.config.reload.<outcome>.
	ConfigReloadPrefix = "loki.config.reload"
	// ConfigReloadOK is published when a reload was applied.
	ConfigReloadOK = ConfigReloadPrefix + ".ok"
	// ConfigReloadFailed is published when a reload was refused and the
	// tools of the last good load were kept.
	ConfigReloadFailed = ConfigReloadPrefix + ".failed"
	// ConfigReloadAll matches both outcomes.
	ConfigReloadAll = ConfigReloadPrefix + ".*"
)
