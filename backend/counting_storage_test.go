package backend

import (
	"context"
	"strings"
	"sync"

	"github.com/hashicorp/vault/sdk/logical"
)

// countingStorage counts the storage calls a request makes, by operation
// and by the first segment of the path ("keys/", "roles/", ...), so that a
// test can say what a request costs.
type countingStorage struct {
	logical.Storage
	mu    sync.Mutex
	calls map[string]int // "put keys/", "list keys/", "get roles/", ...
}

func newCountingStorage(s logical.Storage) *countingStorage {
	return &countingStorage{Storage: s, calls: map[string]int{}}
}

func (c *countingStorage) count(op, path string) {
	seg := path
	if i := strings.IndexByte(path, '/'); i >= 0 {
		seg = path[:i+1]
	}
	c.mu.Lock()
	c.calls[op+" "+seg]++
	c.calls[op]++
	c.mu.Unlock()
}

// n is how many calls of op were made (below prefix seg, when given);
// reset starts counting again.
func (c *countingStorage) n(op string, seg ...string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(seg) > 0 {
		return c.calls[op+" "+seg[0]]
	}
	return c.calls[op]
}

func (c *countingStorage) reset() {
	c.mu.Lock()
	c.calls = map[string]int{}
	c.mu.Unlock()
}

func (c *countingStorage) Get(ctx context.Context, p string) (*logical.StorageEntry, error) {
	c.count("get", p)
	return c.Storage.Get(ctx, p)
}

func (c *countingStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	c.count("put", e.Key)
	return c.Storage.Put(ctx, e)
}

func (c *countingStorage) Delete(ctx context.Context, p string) error {
	c.count("delete", p)
	return c.Storage.Delete(ctx, p)
}

func (c *countingStorage) List(ctx context.Context, p string) ([]string, error) {
	c.count("list", p)
	return c.Storage.List(ctx, p)
}
