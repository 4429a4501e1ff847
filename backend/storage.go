package backend

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/logical"
)

// getJSON reads and decodes one storage entry; a missing entry is (nil, nil).
func getJSON[T any](ctx context.Context, s logical.Storage, path string) (*T, error) {
	e, err := s.Get(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if e == nil {
		return nil, nil
	}
	v := new(T)
	if err := e.DecodeJSON(v); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", path, err)
	}
	return v, nil
}

func putJSON(ctx context.Context, s logical.Storage, path string, v any) error {
	e, err := logical.StorageEntryJSON(path, v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", path, err)
	}
	if err := s.Put(ctx, e); err != nil {
		return fmt.Errorf("storing %s: %w", path, err)
	}
	return nil
}
