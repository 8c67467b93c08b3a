package metrics

// Devices are the device service's gauges: how many known devices are
// online and offline, read at scrape time from a replica's view of the
// device registry.
type Devices struct {
	count *funcGauges
}

// Device states, the values of loki_devices' state label.
const (
	DeviceOnline  = "online"
	DeviceOffline = "offline"
)

// Devices returns the process's device metrics, registering them on first
// use; nil for a nil Registry.
func (r *Registry) Devices() *Devices {
	if r == nil {
		return nil
	}
	r.devicesOnce.Do(func() {
		d := &Devices{count: newFuncGauges(Namespace+"_devices",
			"Devices in the device registry, by state (online or offline), as a device service replica sees it.", true, "state")}
		r.reg.MustRegister(d.count)
		r.devices = d
	})
	return r.devices
}

// AttachReplica reports a device service replica's counts, read at scrape
// time by count, until detach is called. Every replica sees the whole
// registry, so replicas in one process are combined by their maximum.
func (d *Devices) AttachReplica(count func() (online, offline int)) (detach func()) {
	if d == nil {
		return func() {}
	}
	d1 := d.count.attach(func() float64 { on, _ := count(); return float64(on) }, DeviceOnline)
	d2 := d.count.attach(func() float64 { _, off := count(); return float64(off) }, DeviceOffline)
	return func() { d1(); d2() }
}
