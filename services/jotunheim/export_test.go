package jotunheim

// DeviceRequest decodes the body of devices.get, devices.caps and
// devices.remove: a device id or a protojson DeviceRequest.
var DeviceRequest = deviceRequest

// ResultData turns a device's CommandResult into the reply of devices.cmd.
var ResultData = resultData
