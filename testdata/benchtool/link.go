package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// link emulates a network link in front of a loopback server: a TCP proxy
// on 127.0.0.1 whose connections all share one bandwidth budget, as the
// flows of one NIC do, and each of whose new connections pays a round trip
// before its first byte. docs/bench.sh puts one in front of the registry to
// measure pulls against the link rather than against loopback.
//
// The budget is one token bucket per direction (links are full duplex):
// every chunk relayed, on any connection, takes its bytes from the bucket of
// its direction and waits until the bucket has them, so N parallel fetches
// get about 1/N of the rate each and together never more than the rate. The
// round trip is paid once per connection (the TCP handshake); requests on a
// kept-alive connection pay none, so a pull that reuses its connections
// pays only a few round trips in all.
func link(args []string) error {
	fs := flag.NewFlagSet("link", flag.ExitOnError)
	rateFlag := fs.String("rate", "400Mbit", "bandwidth of the link, shared by all connections: 400Mbit, 1Gbit, 50MB (bytes, decimal) or 64MiB, per second")
	rtt := fs.Duration("rtt", 5*time.Millisecond, "round trip each new connection pays before its first byte")
	upstream := fs.String("upstream", "", "host:port of the server behind the link, on loopback (required)")
	addr := fs.String("addr", "127.0.0.1:0", "loopback address to listen on")
	addrFile := fs.String("addr-file", "", "write the address listened on (host:port) to this file once serving")
	fs.Parse(args)
	if *upstream == "" {
		return fmt.Errorf("-upstream is required: the host:port of the registry behind the link")
	}
	rate, err := parseRate(*rateFlag)
	if err != nil {
		return fmt.Errorf("-rate: %w", err)
	}
	if *rtt < 0 {
		return fmt.Errorf("-rtt %v: want a duration of 0 or more", *rtt)
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	if ip := l.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		return fmt.Errorf("refusing to listen on %s: benchtool serves on loopback only", l.Addr())
	}
	p := newLinkProxy(rate, *rtt, *upstream)
	if *addrFile != "" {
		if err := writeAddrFile(*addrFile, l.Addr().String()); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); l.Close() }()
	err = p.serve(l)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func writeAddrFile(name, addr string) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, []byte(addr+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

// parseRate reads a bandwidth per second: a number and a unit, bit, Kbit,
// Mbit, Gbit (decimal, as links are sold), B, KB, MB, GB (decimal bytes) or
// KiB, MiB, GiB (binary bytes). It returns bytes per second.
func parseRate(s string) (float64, error) {
	units := []struct {
		suffix string
		bytes  float64
	}{
		// Longest suffixes first, so that "Mbit" is not read as "…bit".
		{"gbit", 1e9 / 8}, {"mbit", 1e6 / 8}, {"kbit", 1e3 / 8}, {"bit", 1.0 / 8},
		{"gib", 1 << 30}, {"mib", 1 << 20}, {"kib", 1 << 10},
		{"gb", 1e9}, {"mb", 1e6}, {"kb", 1e3}, {"b", 1},
	}
	lower := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
	for _, u := range units {
		num, ok := strings.CutSuffix(lower, u.suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || v <= 0 {
			break
		}
		return v * u.bytes, nil
	}
	return 0, fmt.Errorf("bad rate %q: want a number and a unit, e.g. 400Mbit, 1Gbit, 50MB or 64MiB", s)
}

// bucket is a token bucket kept as a theoretical arrival time (GCRA): the
// link is busy until tat, and a chunk may go as soon as it would finish no
// later than burst after the link frees. Its clock is injected, so tests
// step it instead of sleeping.
//
// The burst is what makes the rate hold on a loaded machine: a relay that
// wakes late from its sleep finds the time it overslept (up to the burst)
// still owed to it, and sends at once, instead of losing it.
type bucket struct {
	mu    sync.Mutex
	rate  float64       // bytes per second
	burst time.Duration // credit a sender may run ahead of the link
	tat   time.Time     // when the link finishes what it has accepted so far
	now   func() time.Time
}

// burstFor is the bucket depth for a rate: 4 ms of the link, at least
// 64 KiB (one relay chunk), so that a timer that fires a few ms late does
// not cost bandwidth, and a burst is at most a few hundred KiB.
func burstFor(rate float64) time.Duration {
	d := 4 * time.Millisecond
	if min := time.Duration(float64(relayChunk) / rate * float64(time.Second)); min > d {
		d = min
	}
	return d
}

func newBucket(rate float64, now func() time.Time) *bucket {
	return &bucket{rate: rate, burst: burstFor(rate), now: now}
}

// reserve books n bytes on the link and returns how long the caller must
// wait before sending them. It is safe for concurrent use; concurrent
// callers are served in the order they reserve.
func (b *bucket) reserve(n int) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if b.tat.Before(now) {
		b.tat = now // an idle link saves no credit beyond the burst
	}
	b.tat = b.tat.Add(time.Duration(float64(n) / b.rate * float64(time.Second)))
	return b.tat.Sub(now) - b.burst
}

// relayChunk is the most one read relays before booking it on the link: at
// 400 Mbit/s, 1.3 ms of the link, so flows interleave finely.
const relayChunk = 64 << 10

type linkProxy struct {
	rtt      time.Duration
	upstream string
	down, up *bucket // down: upstream to client; up: client to upstream
}

func newLinkProxy(rate float64, rtt time.Duration, upstream string) *linkProxy {
	return &linkProxy{
		rtt:      rtt,
		upstream: upstream,
		down:     newBucket(rate, time.Now),
		up:       newBucket(rate, time.Now),
	}
}

// serve accepts connections on l until it is closed, relaying each one.
func (p *linkProxy) serve(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go p.relay(c)
	}
}

func (p *linkProxy) relay(client net.Conn) {
	defer client.Close()
	// The round trip of the handshake: nothing crosses before it is over.
	time.Sleep(p.rtt)
	server, err := net.Dial("tcp", p.upstream)
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchtool link: dialing %s: %v\n", p.upstream, err)
		return
	}
	defer server.Close()
	var wg sync.WaitGroup
	wg.Go(func() { pace(server, client, p.up) })
	pace(client, server, p.down)
	wg.Wait()
}

// pace copies src to dst, each chunk waiting for its bytes on b. At the end
// of src it half-closes dst, so the other direction can still finish (an
// HTTP client may close its side after the request).
func pace(dst, src net.Conn, b *bucket) {
	buf := make([]byte, relayChunk)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if d := b.reserve(n); d > 0 {
				time.Sleep(d)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				// The other side is gone: stop reading the source too.
				src.Close()
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				dst.Close()
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			} else {
				dst.Close()
			}
			return
		}
	}
}
