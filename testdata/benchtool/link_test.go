package main

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		want float64 // bytes per second
	}{
		{"400Mbit", 50e6},
		{"1Gbit", 125e6},
		{"1.5gbit/s", 187.5e6},
		{"800kbit", 100e3},
		{"50MB", 50e6},
		{"64MiB", 64 << 20},
		{"1000B", 1000},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseRate(tt.in)
			if err != nil || got != tt.want {
				t.Errorf("parseRate(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "400", "fast", "-1Mbit", "0Gbit", "Mbit"} {
		if got, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) = %v, want an error", bad, got)
		}
	}
}

// TestBucketRate runs senders against the bucket on a stepped clock: the
// bytes booked over the time that passed must match the rate, whether the
// senders wake exactly on time or late (the burst gives the late ones back
// the time they overslept).
func TestBucketRate(t *testing.T) {
	const rate = 50e6 // 400 Mbit/s
	tests := []struct {
		name     string
		senders  int
		late     time.Duration // how late each sleep ends
		min, max float64       // bounds on booked bytes / (rate × elapsed)
	}{
		{"one sender, on time", 1, 0, 0.99, 1.01},
		{"four senders, on time", 4, 0, 0.99, 1.01},
		{"four senders, 2ms late", 4, 2 * time.Millisecond, 0.97, 1.01},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			now := start
			b := newBucket(rate, func() time.Time { return now })
			// Each sender's next wake-up; the earliest runs first, as the
			// scheduler would run them.
			wake := make([]time.Time, tt.senders)
			for i := range wake {
				wake[i] = start
			}
			var booked int64
			for now.Sub(start) < 2*time.Second {
				i := 0
				for j := range wake {
					if wake[j].Before(wake[i]) {
						i = j
					}
				}
				if wake[i].After(now) {
					now = wake[i]
				}
				d := b.reserve(relayChunk)
				booked += relayChunk
				if d > 0 {
					wake[i] = now.Add(d + tt.late)
				} else {
					wake[i] = now.Add(time.Microsecond) // the write itself
				}
			}
			got := float64(booked) / (rate * now.Sub(start).Seconds())
			if got < tt.min || got > tt.max {
				t.Errorf("booked %d bytes in %v: %.3f of the rate, want %.2f to %.2f", booked, now.Sub(start), got, tt.min, tt.max)
			}
		})
	}
}

// TestLinkRate relays three parallel downloads through a real proxy on
// loopback. The upper bound is firm (the bucket forbids more than the rate,
// plus one burst, whatever the load); the lower one is generous, so that a
// loaded machine does not fail it.
func TestLinkRate(t *testing.T) {
	const (
		rate  = 100e6 / 8 // 100 Mbit/s
		conns = 3
		each  = 2 << 20
		rtt   = 20 * time.Millisecond
	)
	server, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	go func() {
		payload := make([]byte, each)
		for {
			c, err := server.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write(payload)
			}()
		}
	}()
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	go newLinkProxy(rate, rtt, server.Addr().String()).serve(front)

	start := time.Now()
	var wg sync.WaitGroup
	got := make([]int64, conns)
	firstByte := make([]time.Duration, conns)
	for i := range conns {
		wg.Go(func() {
			c, err := net.Dial("tcp", front.Addr().String())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			dialed := time.Now()
			var one [1]byte
			if _, err := io.ReadFull(c, one[:]); err != nil {
				t.Error(err)
				return
			}
			firstByte[i] = time.Since(dialed)
			n, err := io.Copy(io.Discard, c)
			if err != nil {
				t.Error(err)
			}
			got[i] = n + 1
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	var total int64
	for i, n := range got {
		if n != each {
			t.Errorf("connection %d got %d bytes, want %d", i, n, each)
		}
		if firstByte[i] < rtt {
			t.Errorf("connection %d: first byte after %v, want at least the round trip %v", i, firstByte[i], rtt)
		}
		total += n
	}
	ratio := float64(total) / (rate * (elapsed - rtt).Seconds())
	t.Logf("%d bytes in %v: %.3f of the rate", total, elapsed, ratio)
	if ratio > 1.05 || ratio < 0.5 {
		t.Errorf("%d bytes over %v through a %.0f Mbit/s link: %.3f of the rate, want 0.5 to 1.05", total, elapsed, rate*8/1e6, ratio)
	}
}
