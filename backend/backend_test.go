package backend

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

type testEnv struct {
	t        testing.TB
	b        *backend
	storage  logical.Storage
	entityID string // the caller's Vault entity
}

func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	return newTestEnvWith(t, nil)
}

// newTestEnvWith is newTestEnv with the system view sys (nil: the SDK's
// test one), for tests that need Vault's answers such as EntityInfo.
func newTestEnvWith(t testing.TB, sys logical.SystemView) *testEnv {
	t.Helper()
	conf := logical.TestBackendConfig()
	if sys != nil {
		conf.System = sys
	}
	conf.StorageView = barrierStorage{&logical.InmemStorage{}}
	lb, err := Factory(context.Background(), conf)
	if err != nil {
		t.Fatalf("Factory: %v", err)
	}
	b := lb.(*backend)
	b.tidySchedule.disabled = true
	e := &testEnv{t: t, b: b, storage: conf.StorageView, entityID: "test-entity"}
	e.checkAnswers()
	return e
}

// barrierStorage refuses keys holding "..", as Vault's barrier view does
// (ErrRelativePath), so tests see the error a real Vault would give.
type barrierStorage struct{ *logical.InmemStorage }

func (s barrierStorage) check(key string) error {
	if strings.Contains(key, "..") {
		return errors.New("relative paths not supported")
	}
	return nil
}

func (s barrierStorage) List(ctx context.Context, prefix string) ([]string, error) {
	if err := s.check(prefix); err != nil {
		return nil, err
	}
	return s.InmemStorage.List(ctx, prefix)
}

func (s barrierStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if err := s.check(key); err != nil {
		return nil, err
	}
	return s.InmemStorage.Get(ctx, key)
}

func (s barrierStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if err := s.check(e.Key); err != nil {
		return err
	}
	return s.InmemStorage.Put(ctx, e)
}

func (s barrierStorage) Delete(ctx context.Context, key string) error {
	if err := s.check(key); err != nil {
		return err
	}
	return s.InmemStorage.Delete(ctx, key)
}

// keyPath is the path of a key's changes, keys/<role>/id/<key_id>, with
// the role read from storage.
func (e *testEnv) keyPath(id string) string {
	e.t.Helper()
	k, err := getKey(context.Background(), e.storage, id)
	if err != nil || k == nil {
		e.t.Fatalf("key %s: %v (missing: %v)", id, err, k == nil)
	}
	return "keys/" + k.Role + "/id/" + id
}

// do sends a request and fails the test on an internal error; user errors
// come back as responses.
func (e *testEnv) do(op logical.Operation, path string, data map[string]interface{}) *logical.Response {
	e.t.Helper()
	resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
		Operation:  op,
		Path:       path,
		Data:       data,
		Storage:    e.storage,
		EntityID:   e.entityID,
		MountPoint: "keybroker/",
	})
	if err != nil && err != logical.ErrInvalidRequest {
		e.t.Fatalf("%s %s: %v", op, path, err)
	}
	return resp
}

// ok sends a request that must succeed.
func (e *testEnv) ok(op logical.Operation, path string, data map[string]interface{}) *logical.Response {
	e.t.Helper()
	resp := e.do(op, path, data)
	if resp != nil && resp.IsError() {
		e.t.Fatalf("%s %s: %v", op, path, resp.Error())
	}
	return resp
}

// userError sends a request that must fail with a 400 whose message contains want.
func (e *testEnv) userError(op logical.Operation, path string, data map[string]interface{}, want string) {
	e.t.Helper()
	resp := e.do(op, path, data)
	if resp == nil || !resp.IsError() {
		e.t.Fatalf("%s %s: want an error containing %q, got %#v", op, path, want, resp)
	}
	if got := resp.Error().Error(); !strings.Contains(got, want) {
		e.t.Fatalf("%s %s: error %q does not contain %q", op, path, got, want)
	}
}

// storageKeys lists every storage entry below prefix.
func (e *testEnv) storageKeys(prefix string) []string {
	e.t.Helper()
	keys, err := logical.CollectKeysWithPrefix(context.Background(), e.storage, prefix)
	if err != nil {
		e.t.Fatal(err)
	}
	return keys
}

// assertNotStored fails if any storage entry contains secret.
func (e *testEnv) assertNotStored(secret string) {
	e.t.Helper()
	for _, k := range e.storageKeys("") {
		entry, err := e.storage.Get(context.Background(), k)
		if err != nil {
			e.t.Fatal(err)
		}
		if bytes.Contains(entry.Value, []byte(secret)) || strings.Contains(k, secret) {
			e.t.Fatalf("storage entry %q contains the plaintext credential", k)
		}
	}
}

// Every path and every field must carry help an operator can read in
// "vault path-help".
func TestPathHelp(t *testing.T) {
	b := newBackend()
	for _, p := range b.Paths {
		if strings.TrimSpace(p.HelpSynopsis) == "" || strings.TrimSpace(p.HelpDescription) == "" {
			t.Errorf("path %q lacks HelpSynopsis or HelpDescription", p.Pattern)
		}
		for name, f := range p.Fields {
			if strings.TrimSpace(f.Description) == "" {
				t.Errorf("field %q of path %q has no description", name, p.Pattern)
			}
		}
	}
	for _, s := range b.Secrets {
		for name, f := range s.Fields {
			if f.Description == "" {
				t.Errorf("secret %q field %q has no description", s.Type, name)
			}
		}
	}
}

func TestPathHelpRequest(t *testing.T) {
	e := newTestEnv(t)
	resp, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.HelpOperation, Path: "keys/web", Storage: e.storage})
	if err != nil {
		t.Fatal(err)
	}
	help, _ := resp.Data["help"].(string)
	if !strings.Contains(help, "Mint an API key") || !strings.Contains(help, "bound_cidrs") {
		t.Fatalf("path-help for keys/<role> does not describe the path and its fields:\n%s", help)
	}
}

func TestPeriodicTidyRunsOnlyWhenDue(t *testing.T) {
	e := newTestEnv(t)
	e.b.tidySchedule.disabled = false
	now := time.Now()
	if due, err := e.b.tidySchedule.claim(context.Background(), e.storage, now); err != nil || !due {
		t.Fatalf("first claim: due=%v %v", due, err)
	}
	if due, _ := e.b.tidySchedule.claim(context.Background(), e.storage, now.Add(time.Minute)); due {
		t.Fatal("tidy due again before tidyInterval passed")
	}
	// Another node that becomes active (a new backend on the same
	// storage) goes on from the last run, not from zero.
	other := newBackend()
	if due, _ := other.tidySchedule.claim(context.Background(), e.storage, now.Add(time.Minute)); due {
		t.Fatal("a node that became active tidied again within tidyInterval")
	}
	if due, _ := other.tidySchedule.claim(context.Background(), e.storage, now.Add(tidyInterval)); !due {
		t.Fatal("tidy not due after tidyInterval")
	}
	// periodic runs it.
	if err := e.b.periodic(context.Background(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
}
