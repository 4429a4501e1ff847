package backend

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// The plugin is served with plugin.ServeMultiplex: one process for every
// mount of it, so a panic in one request kills every in-flight request of
// every keybroker mount, and any caller able to send it can do so in a loop.
// Every path operation and every lease callback therefore goes through
// guard, applied once in newBackend so that no handler can be added without
// it:
//   - validateRequest first: a field of the wrong type, or one the path does
//     not know, is a 400 before the handler runs (a wrong type is already
//     answered before the framework converts the fields, by
//     checkFieldInput in field_input.go, with the same words);
//   - an id or name that reaches a storage key with ".." in it (a role in a
//     field, an approval_id, a budget id) is a 400: Vault's storage refuses
//     such keys, and the refusal would otherwise be a 500;
//   - a panic becomes a 500 with a logged stack, never a dead process. The
//     log holds the path and operation, never request data, which may carry
//     credentials.

// guardPaths wraps the callback of every operation of every path.
func (b *backend) guardPaths(paths []*framework.Path) {
	for _, p := range paths {
		for op, h := range p.Operations {
			po, ok := h.(*framework.PathOperation)
			if !ok {
				panic(fmt.Sprintf("keybroker: path %q operation %s is not a *framework.PathOperation; guard cannot wrap it", p.Pattern, op))
			}
			po.Callback = b.guard(p.Pattern, op, po.Callback, true)
		}
	}
}

// guardSecrets wraps the lease callbacks, which Vault calls with no user
// fields.
func (b *backend) guardSecrets(secrets []*framework.Secret) {
	for _, s := range secrets {
		if s.Renew != nil {
			s.Renew = b.guard(s.Type, logical.RenewOperation, s.Renew, false)
		}
		if s.Revoke != nil {
			s.Revoke = b.guard(s.Type, logical.RevokeOperation, s.Revoke, false)
		}
	}
}

func (b *backend) guard(pattern string, op logical.Operation, cb framework.OperationFunc, validate bool) framework.OperationFunc {
	return func(ctx context.Context, req *logical.Request, d *framework.FieldData) (resp *logical.Response, err error) {
		defer func() {
			if r := recover(); r != nil {
				b.Logger().Error("request handler panicked; answered 500 instead", "pattern", pattern, "operation", op, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				resp, err = nil, fmt.Errorf("internal error in keybroker while handling %s %s", op, pattern)
			}
		}()
		if validate && d != nil {
			if resp := validateRequest(d); resp != nil {
				return resp, nil
			}
		}
		if req != nil && req.Storage != nil {
			req.Storage = keyCheckedStorage{req.Storage}
		}
		resp, err = cb(ctx, req, d)
		if errors.Is(err, errParentReference) {
			return logical.ErrorResponse("a name or id in this request contains \"..\": names and ids may not"), nil
		}
		return resp, err
	}
}

// errParentReference is a storage key with "..", which only a caller's
// name or id can put there.
var errParentReference = errors.New(`storage key contains ".."`)

// keyCheckedStorage refuses, before Vault does, storage keys that a
// caller's input made relative; guard turns the refusal into a 400.
type keyCheckedStorage struct{ logical.Storage }

func checkStorageKey(key string) error {
	if strings.Contains(key, "..") {
		return errParentReference
	}
	return nil
}

func (s keyCheckedStorage) List(ctx context.Context, prefix string) ([]string, error) {
	if err := checkStorageKey(prefix); err != nil {
		return nil, err
	}
	return s.Storage.List(ctx, prefix)
}

func (s keyCheckedStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if err := checkStorageKey(key); err != nil {
		return nil, err
	}
	return s.Storage.Get(ctx, key)
}

func (s keyCheckedStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if err := checkStorageKey(e.Key); err != nil {
		return err
	}
	return s.Storage.Put(ctx, e)
}

func (s keyCheckedStorage) Delete(ctx context.Context, key string) error {
	if err := checkStorageKey(key); err != nil {
		return err
	}
	return s.Storage.Delete(ctx, key)
}
