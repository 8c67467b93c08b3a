package grpclink

// Match is match, for the table test of MQTT filters.
var Match = match
