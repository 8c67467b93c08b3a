package subjects

// deviceStreamSubjects returns the subjects of device streams for every
// device: the platform's stream controls (jotunheim.*.stream.ctl), which
// whoever may open a stream publishes, and the devices' chunks
// (jotunheim.*.stream.data), which the same identities hear.
func deviceStreamSubjects() (ctl, data string) {
	ctl, _ = DeviceSubjectAll(DeviceStreamCtl)
	data, _ = DeviceSubjectAll(DeviceStreamData)
	return ctl, data
}
