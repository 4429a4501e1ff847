package sidecar

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// One client's refused lookups stop at the burst, and cost Vault nothing
// after; another client is not affected; concurrent lookups of one client
// cannot overshoot, because lookups in flight never outnumber its tokens.
func TestFloodGuardBound(t *testing.T) {
	f := newFixture(t, func(c *Config) { rate := 0.5; c.FailedAuthRate = &rate; c.FailedAuthBurst = 5 })
	fg := f.sc.apiKeys.flood
	var calls atomic.Int64
	refuse := func() bool { calls.Add(1); time.Sleep(time.Millisecond); return true }
	attacker := netip.MustParseAddr("203.0.113.9")
	var wg sync.WaitGroup
	var throttled atomic.Int64
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d := fg.lookup(context.Background(), attacker, refuse); d != nil {
				if d.status != http.StatusTooManyRequests || d.reason != contract.ReasonTooManyFailures || d.retryAfter <= 0 {
					t.Errorf("denial %+v", d)
				}
				throttled.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := calls.Load(); n > 5+1 { // the burst, plus what refilled while they ran
		t.Fatalf("%d Vault lookups from one client, bound is 5 + 0.5/s", n)
	}
	if throttled.Load() < 40 {
		t.Fatalf("only %d of 50 throttled", throttled.Load())
	}
	// Its /64 neighbour is the same client; another address is not.
	if d := fg.lookup(context.Background(), netip.MustParseAddr("2001:db8::1"), refuse); d != nil {
		t.Fatalf("another client: %+v", d)
	}
	for i := 0; i < 5; i++ {
		fg.lookup(context.Background(), netip.MustParseAddr("2001:db8::1"), refuse)
	}
	if d := fg.lookup(context.Background(), netip.MustParseAddr("2001:db8::ffff:1"), refuse); d == nil {
		t.Fatal("the same /64 got a fresh bucket")
	}
	// Valid keys take no failure token, and a client's valid lookups run
	// side by side (up to its tokens), not one at a time.
	var inFlight, peak atomic.Int64
	ok := func() bool {
		n := inFlight.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(20 * time.Millisecond)
		inFlight.Add(-1)
		return false
	}
	good := netip.MustParseAddr("198.51.100.1")
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d := fg.lookup(context.Background(), good, ok); d != nil {
				t.Errorf("valid lookup throttled: %+v", d)
			}
		}()
	}
	wg.Wait()
	if peak.Load() < 2 || peak.Load() > 5 {
		t.Fatalf("peak %d valid lookups in flight for one client with 5 tokens", peak.Load())
	}
}

// Vault lookups in flight across all clients are capped.
func TestFloodGuardConcurrency(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.VaultVerifyConcurrency = 2 })
	var inFlight, peak atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
			f.sc.apiKeys.flood.lookup(context.Background(), ip, func() bool {
				n := inFlight.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				time.Sleep(20 * time.Millisecond)
				inFlight.Add(-1)
				return false
			})
		}(i)
	}
	wg.Wait()
	if peak.Load() != 2 {
		t.Fatalf("peak %d lookups in flight, cap 2", peak.Load())
	}
}

// Server limits: an idle keep-alive connection is closed; oversized headers
// and bodies are refused.
func TestServerLimits(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
	defer up.Close()
	f := newFixture(t, func(c *Config) {
		c.Upstream = up.URL
		c.IdleTimeout = "300ms"
		c.ReadHeaderTimeout = "300ms"
		c.MaxHeaderBytes = 4096
		max := int64(10)
		c.MaxRequestBodyBytes = &max
		c.Routes = []RouteConfig{{PathPrefix: "/", Public: true}}
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := f.sc.server(f.sc.proxyHandler())
	go srv.Serve(l)
	defer srv.Close()
	addr := l.Addr().String()

	for name, req := range map[string]string{
		"idle after a request": "GET /public HTTP/1.1\r\nHost: x\r\n\r\n",
		"headers never end":    "GET /public HTTP/1.1\r\nHost: x\r\n",
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(req))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 4096)
		start := time.Now()
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		if time.Since(start) > 3*time.Second {
			t.Errorf("%s: connection held %s", name, time.Since(start))
		}
		c.Close()
	}

	big, _ := http.NewRequest("GET", "http://"+addr+"/public", nil)
	big.Header.Set("X-Big", stringOf('a', 8192))
	if resp, err := http.DefaultClient.Do(big); err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("8 KiB header: %v %v", resp, err)
	}
	post, _ := http.NewRequest("POST", "http://"+addr+"/public", stringsReader(stringOf('a', 100)))
	if resp, err := http.DefaultClient.Do(post); err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get("X-Keybroker-Reason") != contract.ReasonBodyTooLarge {
		t.Errorf("100-byte body over a 10-byte limit: %v %v", resp, err)
	}
	// Chunked, so no Content-Length says it in advance.
	chunked, _ := http.NewRequest("POST", "http://"+addr+"/public", io.MultiReader(stringsReader(stringOf('a', 100))))
	if resp, err := http.DefaultClient.Do(chunked); err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked 100-byte body over a 10-byte limit: %v %v", resp, err)
	}
	small, _ := http.NewRequest("POST", "http://"+addr+"/public", io.MultiReader(stringsReader("12345")))
	if resp, err := http.DefaultClient.Do(small); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("5-byte body: %v %v", resp, err)
	}
}
