package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/contract"
)

// vaultClient is the sidecar's only way to Vault. It logs in with AppRole and
// keeps its token renewed; a request refused for a bad token triggers one
// fresh login.
type vaultClient struct {
	c *api.Client
	// long is c with a timeout for long-polling feed reads; it shares c's
	// token and follows c's node.
	long  *api.Client
	mount string
	log   hclog.Logger
	// addrs are the nodes to try in turn; c talks to one of them.
	addrs []string

	roleID, roleIDFile, secretIDFile string

	loginMu sync.Mutex
}

// revocationLongPollWait is how long the plugin may hold a feed read.
const revocationLongPollWait = 20 * time.Second

func newVaultClient(s *settings, log hclog.Logger) (*vaultClient, error) {
	c, err := newAPIClient(s, 5*time.Second)
	if err != nil {
		return nil, err
	}
	long, err := newAPIClient(s, revocationLongPollWait+10*time.Second)
	if err != nil {
		return nil, err
	}
	return &vaultClient{c: c, long: long, mount: s.mount, log: log, addrs: s.vaultAddrs, roleID: s.roleID, roleIDFile: s.roleIDFile, secretIDFile: s.secretIDFile}, nil
}

// newAPIClient is a Vault client of its own (HTTP client and all) with a
// timeout per request and no token.
func newAPIClient(s *settings, timeout time.Duration) (*api.Client, error) {
	cfg := api.DefaultConfig() // reads VAULT_ADDR, VAULT_CACERT, ...
	if cfg.Error != nil {
		return nil, fmt.Errorf("vault client config: %w", cfg.Error)
	}
	if len(s.vaultAddrs) > 0 {
		cfg.Address = s.vaultAddrs[0]
	}
	if s.vaultCACert != "" {
		if err := cfg.ConfigureTLS(&api.TLSConfig{CACert: s.vaultCACert}); err != nil {
			return nil, fmt.Errorf("vault ca_cert: %w", err)
		}
	}
	// The pooled transport keeps GOMAXPROCS+1 idle connections per host; a
	// burst of cold API keys then opens and closes a connection per call.
	if t, ok := cfg.HttpClient.Transport.(*http.Transport); ok {
		t.MaxIdleConnsPerHost = 64
	}
	cfg.Timeout = timeout
	cfg.MaxRetries = 0 // the sidecar decides what a failure means
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.ClearToken() // never VAULT_TOKEN: the sidecar has its own identity
	return c, nil
}

func readTrimmed(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// login logs in with AppRole and returns the auth secret.
func (v *vaultClient) login(ctx context.Context) (*api.Secret, error) {
	v.loginMu.Lock()
	defer v.loginMu.Unlock()
	roleID := v.roleID
	if v.roleIDFile != "" {
		var err error
		if roleID, err = readTrimmed(v.roleIDFile); err != nil {
			return nil, fmt.Errorf("reading role_id_file: %w", err)
		}
	}
	secretID, err := readTrimmed(v.secretIDFile)
	if err != nil {
		return nil, fmt.Errorf("reading secret_id_file: %w", err)
	}
	var sec *api.Secret
	err = v.acrossNodes(func() error {
		anon, err := v.c.Clone()
		if err != nil {
			return err
		}
		anon.ClearToken()
		sec, err = anon.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]interface{}{
			"role_id": roleID, "secret_id": secretID,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("approle login: %w", err)
	}
	if sec == nil || sec.Auth == nil {
		return nil, errors.New("approle login returned no token")
	}
	v.c.SetToken(sec.Auth.ClientToken)
	v.long.SetToken(sec.Auth.ClientToken)
	return sec, nil
}

// keepLoggedIn renews the token while it can and logs in again when it
// cannot, until ctx ends.
func (v *vaultClient) keepLoggedIn(ctx context.Context, sec *api.Secret) {
	backoff := time.Second
	for ctx.Err() == nil {
		if sec == nil {
			var err error
			if sec, err = v.login(ctx); err != nil {
				v.log.Warn("vault login failed; retrying", "error", err, "in", backoff)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, time.Minute)
				continue
			}
			backoff = time.Second
		}
		w, err := v.c.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: sec})
		if err != nil {
			v.log.Warn("cannot renew vault token; logging in again", "error", err)
			sec = nil
			continue
		}
		go w.Start()
	watch:
		for {
			select {
			case <-ctx.Done():
				w.Stop()
				return
			case err := <-w.DoneCh():
				if err != nil {
					v.log.Warn("vault token renewal ended", "error", err)
				}
				break watch
			case <-w.RenewCh():
				v.log.Debug("renewed vault token")
			}
		}
		sec = nil
	}
}

// withLogin runs f, and once more after a fresh login if Vault refused the
// token (expired, revoked).
func (v *vaultClient) withLogin(ctx context.Context, f func() error) error {
	err := v.acrossNodes(f)
	var re *api.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusForbidden {
		if _, lerr := v.login(ctx); lerr != nil {
			return fmt.Errorf("%w (and logging in again failed: %w)", err, &loginError{lerr})
		}
		err = v.acrossNodes(f)
	}
	return err
}

// loginError is a login that failed after Vault refused the token: the
// refusal then says nothing of the policy.
type loginError struct{ err error }

func (e *loginError) Error() string { return e.err.Error() }
func (e *loginError) Unwrap() error { return e.err }

// acrossNodes runs f, and again on each other node in turn while the node
// it ran on was out of reach (see nodeUnavailable). The next call starts at
// the node that answered last. With one address it is f. A call the first
// node did carry out before failing may so be made twice: verify and the
// feed are reads, reports are running totals, and a duplicate reservation
// or rate grant only holds units until it expires unused.
func (v *vaultClient) acrossNodes(f func() error) error {
	err := f()
	for i := 1; i < len(v.addrs) && nodeUnavailable(err); i++ {
		failed := v.c.Address()
		next := v.addrs[0]
		for j, a := range v.addrs {
			if a == failed {
				next = v.addrs[(j+1)%len(v.addrs)]
			}
		}
		v.log.Warn("vault node out of reach; trying the next", "failed", failed, "next", next, "error", err)
		if err := v.c.SetAddress(next); err != nil {
			return err
		}
		err = f()
	}
	return err
}

// nodeUnavailable says whether err is the node's failure rather than an
// answer: no HTTP answer at all, or 502/503/504 (sealed, shutting down, no
// active node to forward to). A 500 is keybroker's or storage's answer,
// which another node would only forward to the same active node.
func nodeUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	return !errors.Is(err, context.Canceled)
}

func (v *vaultClient) verifyKey(ctx context.Context, key, remoteAddr string) (*contract.VerifyAnswer, error) {
	var ans contract.VerifyAnswer
	err := v.withLogin(ctx, func() error {
		sec, err := v.c.Logical().WriteWithContext(ctx, v.mount+"/"+contract.PathVerify, map[string]interface{}{
			contract.FieldCredential: key, contract.FieldRemoteAddr: remoteAddr,
		})
		if err != nil {
			return err
		}
		if sec == nil {
			return errors.New("empty verify answer")
		}
		return remarshal(sec.Data, &ans)
	})
	if err != nil {
		return nil, fmt.Errorf("keybroker verify: %w", err)
	}
	return &ans, nil
}

// revocations reads the feed after a cursor; with wait > 0 the plugin holds
// the read until a revocation is added or wait passes.
func (v *vaultClient) revocations(ctx context.Context, after uint64, wait time.Duration) (*contract.FeedPage, error) {
	var page contract.FeedPage
	q := map[string][]string{contract.FieldAfter: {strconv.FormatUint(after, 10)}}
	if err := v.readFeed(ctx, contract.PathRevocations, q, wait, &page); err != nil {
		return nil, fmt.Errorf("keybroker revocations: %w", err)
	}
	return &page, nil
}

// keyRecordsSnapshot reads the page of key records after key_id afterID.
func (v *vaultClient) keyRecordsSnapshot(ctx context.Context, afterID string, f keyFilter) (*contract.KeyRecordsPage, error) {
	var page contract.KeyRecordsPage
	q := f.query()
	q[contract.FieldAfterID] = []string{afterID}
	// Packed pages when the plugin has them; an older one answers JSON.
	q[contract.FieldFormat] = []string{contract.FormatPacked1}
	if err := v.readFeed(ctx, contract.PathKeyRecordsSnapshot, q, 0, &page); err != nil {
		return nil, fmt.Errorf("keybroker key-records/snapshot: %w", err)
	}
	return &page, nil
}

// keyRecordChanges reads the key-record changes after a cursor of an
// epoch, long-polling like revocations.
func (v *vaultClient) keyRecordChanges(ctx context.Context, after uint64, epoch string, wait time.Duration, f keyFilter) (*contract.KeyRecordsPage, error) {
	var page contract.KeyRecordsPage
	q := f.query()
	q[contract.FieldAfter], q[contract.FieldEpoch] = []string{strconv.FormatUint(after, 10)}, []string{epoch}
	if err := v.readFeed(ctx, contract.PathKeyRecords, q, wait, &page); err != nil {
		return nil, fmt.Errorf("keybroker key-records: %w", err)
	}
	return &page, nil
}

// readFeed reads a feed path of the mount into out (the answer's data),
// decoding the body once. With wait > 0 it asks the plugin to hold the
// read that long, on the long-poll client.
func (v *vaultClient) readFeed(ctx context.Context, path string, q map[string][]string, wait time.Duration, out any) error {
	if wait > 0 {
		// A held read answers within its wait: one that does not, on a
		// connection that went silent, ends soon after.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait+5*time.Second)
		defer cancel()
	}
	return v.withLogin(ctx, func() error {
		c := v.c
		if wait > 0 {
			c = v.long
			if a := v.c.Address(); c.Address() != a { // follow the node acrossNodes chose
				if err := c.SetAddress(a); err != nil {
					return err
				}
			}
			q[contract.FieldWait] = []string{strconv.FormatInt(int64(wait/time.Second), 10)}
		}
		resp, err := c.Logical().ReadRawWithDataWithContext(ctx, v.mount+"/"+path, q)
		if resp != nil {
			defer resp.Body.Close()
		}
		if err != nil {
			return err
		}
		var body struct {
			Data json.RawMessage `json:"data"`
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, maxFeedAnswer)).Decode(&body); err != nil {
			return fmt.Errorf("decoding %s: %w", path, err)
		}
		if len(body.Data) == 0 || string(body.Data) == "null" {
			return fmt.Errorf("empty %s answer", path)
		}
		return json.Unmarshal(body.Data, out)
	})
}

// maxFeedAnswer bounds what one feed read may send: a page of key records
// is some 400 KB.
const maxFeedAnswer = 64 << 20

// raw reads an unauthenticated raw-JSON path of the mount (jwks, discovery).
func (v *vaultClient) raw(ctx context.Context, path string) ([]byte, error) {
	var body []byte
	err := v.acrossNodes(func() error {
		resp, err := v.c.Logical().ReadRawWithContext(ctx, v.mount+"/"+path)
		if resp != nil {
			defer resp.Body.Close()
		}
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return &api.ResponseError{HTTPMethod: http.MethodGet, URL: path, StatusCode: resp.StatusCode}
		}
		body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return body, nil
}

func (v *vaultClient) issuer(ctx context.Context) (string, error) {
	b, err := v.raw(ctx, contract.PathOpenIDDiscovery)
	if err != nil {
		return "", err
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(b, &doc); err != nil || doc.Issuer == "" {
		return "", fmt.Errorf("discovery document has no issuer")
	}
	return doc.Issuer, nil
}

// remarshal converts Vault's generic Data map into a typed answer.
func remarshal(in map[string]interface{}, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// write sends req, a contract request, to path of the mount, and decodes
// its answer's data into out (nil: the answer is not read).
func (v *vaultClient) write(ctx context.Context, path string, req, out any) error {
	data, err := requestData(req)
	if err != nil {
		return err
	}
	return v.withLogin(ctx, func() error {
		sec, err := v.c.Logical().WriteWithContext(ctx, v.mount+"/"+path, data)
		if err != nil || out == nil {
			return err
		}
		if sec == nil {
			return fmt.Errorf("empty %s answer", path)
		}
		return remarshal(sec.Data, out)
	})
}

// requestData is a contract request as the JSON object it is sent as. A
// map, not the encoded bytes: the api client sends a redirected write
// (a standby's 307) again from the map, and from bytes it would send
// "null". Numbers stay json.Numbers, so they are sent as they were.
func requestData(req any) (map[string]interface{}, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var data map[string]interface{}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return data, dec.Decode(&data)
}

// errRefused is a report Vault refused (an unknown reservation, or one that
// ended too long ago): retrying cannot help.
var errRefused = errors.New("refused")

// reserve asks for a budget reservation, or a top-up of one.
func (v *vaultClient) reserve(ctx context.Context, req contract.BudgetReserve) (*contract.BudgetReservation, error) {
	var r contract.BudgetReservation
	if err := v.write(ctx, contract.PathBudgetReserve, req, &r); err != nil {
		return nil, fmt.Errorf("keybroker %s: %w", contract.PathBudgetReserve, err)
	}
	return &r, nil
}

// report sends what a reservation used; errRefused when retrying it cannot
// help.
func (v *vaultClient) report(ctx context.Context, req contract.BudgetReport) (*contract.BudgetReportAnswer, error) {
	var r contract.BudgetReportAnswer
	err := v.write(ctx, contract.PathBudgetReport, req, &r)
	var re *api.ResponseError
	// 403 after withLogin logged in again: the reservation is another
	// identity's (an owner by token accessor changes with each login), or
	// the policy does not allow reports. Retrying cannot help either.
	if errors.As(err, &re) && (re.StatusCode == http.StatusBadRequest || re.StatusCode == http.StatusForbidden) {
		return nil, fmt.Errorf("keybroker %s: %w: %v", contract.PathBudgetReport, errRefused, strings.Join(re.Errors, "; "))
	}
	if err != nil {
		return nil, fmt.Errorf("keybroker %s: %w", contract.PathBudgetReport, err)
	}
	return &r, nil
}

// rateReserve takes requests from the cluster-wide window of a
// credential's lineage.
func (v *vaultClient) rateReserve(ctx context.Context, req contract.RateReserve) (*contract.RateAnswer, error) {
	var r contract.RateAnswer
	if err := v.write(ctx, contract.PathRateReserve, req, &r); err != nil {
		return nil, fmt.Errorf("keybroker %s: %w", contract.PathRateReserve, err)
	}
	return &r, nil
}

// reportKeyUsage sends a key-usage report; its answer says nothing the
// sidecar acts on. The error is withLogin's, undecorated: the caller tells
// a refusal by its status.
func (v *vaultClient) reportKeyUsage(ctx context.Context, req contract.KeyUsageReport) error {
	return v.write(ctx, contract.PathKeyUsage, req, nil)
}
