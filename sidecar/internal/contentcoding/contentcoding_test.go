package contentcoding

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"io"
	"testing"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// closeTracker records whether the body under a decoder was closed.
type closeTracker struct {
	io.Reader
	closed bool
}

func (c *closeTracker) Close() error { c.closed = true; return nil }

func encoded(t *testing.T, w func(io.Writer) io.WriteCloser, plain []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := w(&b)
	if _, err := zw.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Every coding the sidecar names is decoded, in any case and with spaces
// around it, deflate both as RFC 9110 says (zlib) and as some servers send
// it (raw); closing the decoder closes the body.
func TestDecode(t *testing.T) {
	plain := []byte(`{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}`)
	gz := func(w io.Writer) io.WriteCloser { return gzip.NewWriter(w) }
	zl := func(w io.Writer) io.WriteCloser { return zlib.NewWriter(w) }
	raw := func(w io.Writer) io.WriteCloser { fw, _ := flate.NewWriter(w, flate.DefaultCompression); return fw }
	br := func(w io.Writer) io.WriteCloser { return brotli.NewWriter(w) }
	zs := func(w io.Writer) io.WriteCloser { zw, _ := zstd.NewWriter(w); return zw }
	for _, tc := range []struct {
		coding string
		body   []byte
	}{
		{"gzip", encoded(t, gz, plain)},
		{"x-gzip", encoded(t, gz, plain)},
		{" GZIP ", encoded(t, gz, plain)},
		{"deflate", encoded(t, zl, plain)},
		{"deflate", encoded(t, raw, plain)},
		{"br", encoded(t, br, plain)},
		{"zstd", encoded(t, zs, plain)},
	} {
		body := &closeTracker{Reader: bytes.NewReader(tc.body)}
		r, err := Decode(tc.coding, body)
		if err != nil {
			t.Fatalf("Decode(%q): %v", tc.coding, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, plain) {
			t.Errorf("Decode(%q) read %q, %v; want %q", tc.coding, got, err, plain)
		}
		if err := r.Close(); err != nil || !body.closed {
			t.Errorf("Decode(%q): Close = %v, body closed %v", tc.coding, err, body.closed)
		}
	}
}

// A coding it cannot decode (several codings, compress, an unknown one) is
// refused, not guessed at.
func TestDecodeUnsupported(t *testing.T) {
	for _, coding := range []string{"gzip, br", "compress", "x-compress", "identity", "snappy", ""} {
		if _, err := Decode(coding, io.NopCloser(bytes.NewReader(nil))); !errors.Is(err, ErrUnsupported) {
			t.Errorf("Decode(%q) = %v, want ErrUnsupported", coding, err)
		}
	}
}

// A broken stream is an error on Read, not a panic or a silent empty body.
func TestDecodeBroken(t *testing.T) {
	for _, coding := range []string{"gzip", "br", "zstd"} {
		r, err := Decode(coding, io.NopCloser(bytes.NewReader([]byte("not compressed at all, not even close"))))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(r); err == nil {
			t.Errorf("Decode(%q) read a broken stream without error", coding)
		}
	}
}
