package sidecar

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/vault/api"
)

// oneLine is a Vault error as one log line: the Vault API's own text is a
// 9-line block (URL, code, a bulleted list), which a retry loop repeats
// until the log is mostly that block. It keeps what was asked, the status
// and Vault's words.
func oneLine(err error) string {
	var re *api.ResponseError
	if !errors.As(err, &re) {
		return err.Error()
	}
	words := strings.Join(strings.Fields(strings.Join(re.Errors, "; ")), " ")
	words = strings.TrimPrefix(words, "1 error occurred: * ")
	return fmt.Sprintf("%s %s: %d: %s", re.HTTPMethod, re.URL, re.StatusCode, words)
}
