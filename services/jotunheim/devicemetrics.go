package jotunheim

// attachDeviceGauges reports, until the returned function is called, the
// online and offline devices in this replica's view of the registry as
// loki_devices{state=...} (a no-op without metrics).
func (s *Service) attachDeviceGauges() (detach func()) {
	return s.cfg.Metrics.Devices().AttachReplica(s.countDevices)
}

// countDevices counts the cached device records by presence.
func (s *Service) countDevices() (online, offline int) {
	s.cacheMu.RLock()
	defer s.cacheMu.RUnlock()
	for _, c := range s.cache {
		if c.d == nil {
			continue
		}
		if c.d.GetOnline() {
			online++
		} else {
			offline++
		}
	}
	return online, offline
}
