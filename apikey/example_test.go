package apikey_test

import (
	"bytes"
	"fmt"
	"time"

	"github.com/keybroker/keybroker/apikey"
)

// A verifier refuses what is not a key before any lookup: Parse checks the
// shape and the checksum, and gives the key_id to look the key up by.
func ExampleParse() {
	// Randomness from a fixed source, so that the example's output is
	// fixed; Generate reads crypto/rand by default.
	key, id, err := apikey.GenerateAt(bytes.NewReader(bytes.Repeat([]byte{7, 200, 31, 99}, 1024)), "kb", time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	if err != nil {
		panic(err)
	}
	k, err := apikey.Parse(key)
	fmt.Println(k.Prefix, k.ID == id, err)

	typo := key[:len(key)-1] + "x"
	_, err = apikey.Parse(typo)
	fmt.Println(err)
	// Output:
	// kb true <nil>
	// malformed API key
}
