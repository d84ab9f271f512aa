package main

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/rogpeppe/go-internal/testscript"
)

// Issue 13: a registry of the script's own that counts the requests it
// serves, so that a script can say an up-to-date pull asked for no blob.
// Scripts run in parallel: a shared registry's counts would mix them.

// regCounter counts one script's counting registry's requests.
type regCounter struct {
	blobGets, manifestReqs atomic.Int64
}

const counterKey = "regcounter"

// cmdCountingRegistry starts `countingregistry`: an in-process registry on
// 127.0.0.1 with the test images pushed, at $CREG, counting the blob GETs
// and manifest requests it serves from then on.
func cmdCountingRegistry(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: countingregistry")
	}
	counts := ts.Value(counterKey).(*regCounter)
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/"):
			counts.blobGets.Add(1)
		case strings.Contains(r.URL.Path, "/manifests/"):
			counts.manifestReqs.Add(1)
		}
		inner.ServeHTTP(w, r)
	}))
	ts.Defer(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	for ref, img := range testImages() {
		r, err := name.ParseReference(host + "/" + ref)
		if err == nil {
			err = remote.Write(r, img, remote.WithContext(context.Background()))
		}
		if err != nil {
			ts.Fatalf("pushing %s: %v", ref, err)
		}
	}
	counts.blobGets.Store(0)
	counts.manifestReqs.Store(0)
	ts.Setenv("CREG", host)
}

// cmdRequests checks `requests blobs|manifests N`: the counting registry
// served N such requests since the last check, and resets the count.
func cmdRequests(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: requests blobs|manifests N")
	}
	counts := ts.Value(counterKey).(*regCounter)
	want, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil {
		ts.Fatalf("requests: %v", err)
	}
	var got int64
	switch args[0] {
	case "blobs":
		got = counts.blobGets.Swap(0)
	case "manifests":
		got = counts.manifestReqs.Swap(0)
	default:
		ts.Fatalf("usage: requests blobs|manifests N")
	}
	if got != want {
		ts.Fatalf("the counting registry served %d %s requests, want %d", got, args[0], want)
	}
}
