package jotunheim

import (
	"context"
	"errors"
	"time"

	"github.com/loki-iot/loki/hardware"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
)

// loops sends heartbeats and periodic states until ctx ends, restarting
// its timers when config.set changes a period.
func (a *Agent) loops(ctx context.Context) {
	for {
		a.mu.Lock()
		set, changed := a.settings, a.settingsCh
		a.mu.Unlock()
		hb := time.NewTicker(set.heartbeat())
		tel := time.NewTicker(set.telemetry())
		stop := func() { hb.Stop(); tel.Stop() }
	inner:
		for {
			select {
			case <-ctx.Done():
				stop()
				return
			case <-changed:
				stop()
				break inner
			case <-hb.C:
				if !a.online.Load() {
					continue // presence only: never spooled
				}
				h := &jv1.Heartbeat{Uptime: time.Since(a.started).Seconds(), Seq: a.heartbeatSeq.Add(1)}
				if err := a.publish(a.topics.heartbeat, 0, false, h); err != nil {
					a.log.Debug("heartbeat", logErr, err)
				}
			case <-tel.C:
				a.publishStates(true)
			}
		}
	}
}

// motionWait bounds one edge wait (the wait does not end with its context),
// so a stop or a replaced board is seen within it.
const motionWait = time.Second

// watchMotion publishes an Event{kind: "motion"} and the new state when a
// motion sensor's pin changes, for every PIR sensor whose host can detect
// edges, until ctx ends.
func (a *Agent) watchMotion(ctx context.Context) {
	for ctx.Err() == nil {
		dev := a.hw.device()
		var pins []hardware.SensorConfig
		for _, s := range dev.Config().Sensors {
			if s.Kind == hardware.KindMotion {
				pins = append(pins, s)
			}
		}
		if len(pins) == 0 {
			if !sleep(ctx, motionWait) {
				return
			}
			continue
		}
		done := make(chan struct{}, len(pins))
		for _, s := range pins {
			go func() {
				defer func() { done <- struct{}{} }()
				a.watchPin(ctx, dev, s)
			}()
		}
		for range pins {
			<-done
		}
	}
}

// watchPin waits for edges on s's pin while dev is the agent's device.
func (a *Agent) watchPin(ctx context.Context, dev *hardware.Device, s hardware.SensorConfig) {
	for ctx.Err() == nil && a.hw.device() == dev {
		e, err := dev.WaitEdge(ctx, s.Pin, "", motionWait)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, context.Canceled) && a.hw.device() == dev {
				a.log.Debug("motion sensor cannot signal edges; its state is sent with telemetry", logEntity, s.Name, logErr, err)
				sleep(ctx, time.Minute)
			}
			return
		}
		if !e.Edge {
			continue
		}
		motion := e.Level == 1
		a.publishState(s.Name, motion, "", e.At, false)
		if motion {
			a.publishEvent("motion", s.Name, map[string]any{"motion": true})
		}
	}
}
