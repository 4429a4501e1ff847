package sidecar

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// New starts nothing and opens nothing: sidecars built and dropped without
// Start leave no goroutine and no file behind, and Stop on one returns at
// once.
func TestNewStartsNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.log")
	before := runtime.NumGoroutine()
	var last *fixture
	for range 50 {
		last = newFixture(t, func(c *Config) { c.DecisionLogPath = path })
	}
	if n := runtime.NumGoroutine(); n > before+5 {
		t.Errorf("50 New calls left %d goroutines running", n-before)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("New created the decision log: %v", err)
	}
	stopped := make(chan struct{})
	go func() { last.sc.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		t.Fatal("Stop without Start did not return")
	}
}

// Start opens the decision log; a file that cannot be opened is its error,
// and a later Start may try again.
func TestStartOpensDecisionLog(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "decisions.log")
	f := newFixture(t, func(c *Config) { c.DecisionLogPath = path; c.LogLevel = "off" })
	if err := os.Mkdir(path, 0o700); err != nil { // a directory where the file goes
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := f.sc.Start(ctx); err == nil || !strings.Contains(err.Error(), "decision_log_path") {
		t.Fatalf("Start with an unopenable decision log: %v", err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := f.sc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	f.sc.Stop()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("Start did not open the decision log: %v", err)
	}
}

// Serve that cannot start says why and closes what it was given.
func TestServeStartFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.log")
	f := newFixture(t, func(c *Config) { c.DecisionLogPath = path; c.LogLevel = "off" })
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	auth, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.sc.Serve(context.Background(), Listeners{Auth: auth}); err == nil || !strings.Contains(err.Error(), "decision_log_path") {
		t.Fatalf("Serve with an unopenable decision log: %v", err)
	}
	if c, err := net.DialTimeout("tcp", auth.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Fatal("the auth listener is still open")
	}
}

// Decisions an embedder's middleware made before a Start that never came
// are never written: Stop counts them as dropped, as every decision the
// log does not hold is counted.
func TestStopCountsDecisionsNeverWritten(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.DecisionLogPath = filepath.Join(t.TempDir(), "decisions.log") })
	h := f.sc.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	for range 7 {
		if w := send(h, "GET", "/v1/items/1", "127.0.0.1:1", nil); w.Code != http.StatusUnauthorized {
			t.Fatalf("no credential: %d", w.Code)
		}
	}
	f.sc.Stop()
	if n := testutil.ToFloat64(f.sc.m.decisionLogDropped); n != 7 {
		t.Errorf("decision_log_dropped_total = %v after 7 decisions and no Start, want 7", n)
	}
}

// Start and Stop may come from two goroutines: once stopped, a Sidecar
// starts nothing (a Start losing the race used to leave its feeds running
// after Stop returned), and the two never race (go test -race).
func TestStartAfterStopStartsNothing(t *testing.T) {
	for range 20 {
		f := newFixture(t, nil)
		done := make(chan struct{})
		go func() { _ = f.sc.Start(context.Background()); close(done) }()
		f.sc.Stop()
		<-done
	}
	f := newFixture(t, nil)
	f.sc.Stop()
	before := runtime.NumGoroutine()
	if err := f.sc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("Start after Stop started %d goroutines", n-before)
	}
}

// A Start that fails says so in the log too: an embedder that drops its
// error otherwise sees only every credential refused.
func TestStartFailureLogged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.log")
	f := newFixture(t, func(c *Config) { c.DecisionLogPath = path })
	var logs bytes.Buffer
	f.sc.log = hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := f.sc.Start(context.Background()); err == nil {
		t.Fatal("Start with an unopenable decision log succeeded")
	}
	if !strings.Contains(logs.String(), "[ERROR]") || !strings.Contains(logs.String(), "decision log cannot be opened") {
		t.Errorf("logged: %q", logs.String())
	}
}
