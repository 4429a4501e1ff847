package sidecar

import (
	"errors"
	"fmt"
	"testing"

	"github.com/hashicorp/vault/api"
)

func TestOneLine(t *testing.T) {
	forbidden := &api.ResponseError{HTTPMethod: "GET", URL: "http://127.0.0.1:8200/v1/nope/revocations?after=0", StatusCode: 403,
		Errors: []string{"1 error occurred:\n\t* permission denied\n\n"}}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("keybroker revocations: %w", forbidden), "GET http://127.0.0.1:8200/v1/nope/revocations?after=0: 403: permission denied"},
		{&api.ResponseError{HTTPMethod: "PUT", URL: "u", StatusCode: 400, Errors: []string{"a", "b\nc"}}, "PUT u: 400: a; b c"},
		{errors.New("dial tcp: refused"), "dial tcp: refused"},
	} {
		if got := oneLine(tc.err); got != tc.want {
			t.Errorf("oneLine(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
