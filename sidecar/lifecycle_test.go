package sidecar

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
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
