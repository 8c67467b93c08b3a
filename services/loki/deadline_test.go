package loki

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

type ctxKey struct{}

func TestDeadlines(t *testing.T) {
	parent, cancelParent := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
	defer cancelParent()
	d, stop := newDeadlines(parent)
	defer stop()

	t.Run("deadline passes", func(t *testing.T) {
		ctx, cancel := d.withTimeout(parent, 5*time.Millisecond)
		defer cancel()
		<-ctx.Done()
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("got %v, want %v", ctx.Err(), context.DeadlineExceeded)
		}
	})
	t.Run("deadline and values", func(t *testing.T) {
		before := time.Now()
		ctx, cancel := d.withTimeout(parent, time.Hour)
		defer cancel()
		dl, ok := ctx.Deadline()
		if !ok || dl.Before(before.Add(time.Hour)) {
			t.Fatalf("got deadline %v, %v, want about an hour from now", dl, ok)
		}
		if got := ctx.Value(ctxKey{}); got != "v" {
			t.Fatalf("got value %v, want the parent's", got)
		}
		if ctx.Err() != nil {
			t.Fatalf("got %v, want nil before the deadline", ctx.Err())
		}
	})
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := d.withTimeout(parent, time.Hour)
		cancel()
		cancel()
		<-ctx.Done()
		if !errors.Is(ctx.Err(), context.Canceled) {
			t.Fatalf("got %v, want %v", ctx.Err(), context.Canceled)
		}
	})
	t.Run("earlier deadline added later ends first", func(t *testing.T) {
		long, cancelLong := d.withTimeout(parent, time.Hour)
		defer cancelLong()
		short, cancelShort := d.withTimeout(parent, 5*time.Millisecond)
		defer cancelShort()
		<-short.Done()
		if long.Err() != nil {
			t.Fatalf("long: got %v, want nil", long.Err())
		}
	})
	t.Run("many, cancelled in any order", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 64 {
			wg.Go(func() {
				timeout := time.Hour
				if i%4 == 0 {
					timeout = time.Duration(i) * time.Millisecond
				}
				ctx, cancel := d.withTimeout(parent, timeout)
				if i%4 == 0 {
					<-ctx.Done()
					if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
						t.Errorf("got %v, want %v", ctx.Err(), context.DeadlineExceeded)
					}
				}
				cancel()
			})
		}
		wg.Wait()
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.heap) != 0 {
			t.Fatalf("got %d contexts still watched, want 0", len(d.heap))
		}
	})
	t.Run("derived context ends with it", func(t *testing.T) {
		ctx, cancel := d.withTimeout(parent, time.Hour)
		child, cancelChild := context.WithTimeout(ctx, time.Hour)
		defer cancelChild()
		cancel()
		<-child.Done()
	})
	t.Run("other parent", func(t *testing.T) {
		other, cancelOther := context.WithCancel(context.Background())
		ctx, cancel := d.withTimeout(other, time.Hour)
		defer cancel()
		cancelOther()
		<-ctx.Done()
	})
	t.Run("parent ends", func(t *testing.T) {
		ctx, cancel := d.withTimeout(parent, time.Hour)
		defer cancel()
		cancelParent()
		<-ctx.Done()
		if !errors.Is(ctx.Err(), context.Canceled) {
			t.Fatalf("got %v, want %v", ctx.Err(), context.Canceled)
		}
		late, cancelLate := d.withTimeout(parent, time.Hour)
		defer cancelLate()
		if late.Err() == nil {
			t.Fatal("got a live context after the parent ended, want it ended")
		}
	})
}

func BenchmarkWithTimeout(b *testing.B) {
	parent, cancelParent := context.WithCancel(context.Background())
	defer cancelParent()
	d, stop := newDeadlines(parent)
	defer stop()
	for _, bc := range []struct {
		name        string
		withTimeout func(context.Context, time.Duration) (context.Context, context.CancelFunc)
	}{
		{"context", context.WithTimeout},
		{"deadlines", d.withTimeout},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					ctx, cancel := bc.withTimeout(parent, 5*time.Second)
					_ = ctx.Done()
					cancel()
				}
			})
		})
	}
}
