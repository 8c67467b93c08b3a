//go:build race

package loki_test

// raceEnabled: under the race detector a worker's resident memory holds
// the detector's shadow memory too, so growth is not the script's alone.
const raceEnabled = true
