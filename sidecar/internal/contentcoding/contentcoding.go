package contentcoding

import (
	"bufio"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"io"
	"strings"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// ErrUnsupported is a Content-Encoding the sidecar cannot decode.
var ErrUnsupported = errors.New("unsupported content encoding")

// maxZstdWindow bounds the memory one zstd stream may ask for.
const maxZstdWindow = 8 << 20

// Decode returns body decoded from encoding (one coding, as sent in
// Content-Encoding: gzip, x-gzip, deflate, br or zstd, in any case), or
// ErrUnsupported. The decoder is made on the first Read, so a streamed
// answer is not held up waiting for its first bytes; closing the result
// closes body.
func Decode(encoding string, body io.ReadCloser) (io.ReadCloser, error) {
	enc := strings.ToLower(strings.TrimSpace(encoding))
	switch enc {
	case "gzip", "x-gzip", "deflate", "br", "zstd":
	default:
		return nil, ErrUnsupported
	}
	return &lazyDecoder{enc: enc, body: body}, nil
}

// lazyDecoder makes its decoder on the first Read.
type lazyDecoder struct {
	enc  string
	body io.ReadCloser
	r    io.Reader
	done func()
	err  error
}

func (l *lazyDecoder) Read(p []byte) (int, error) {
	if l.r == nil && l.err == nil {
		l.r, l.err = l.open()
	}
	if l.err != nil {
		return 0, l.err
	}
	return l.r.Read(p)
}

func (l *lazyDecoder) open() (io.Reader, error) {
	br := bufio.NewReader(l.body)
	switch l.enc {
	case "gzip", "x-gzip":
		return gzip.NewReader(br)
	case "deflate":
		// RFC 9110's deflate is zlib; some servers send raw deflate.
		if h, err := br.Peek(2); err == nil && h[0]&0x0f == 8 && (uint16(h[0])<<8|uint16(h[1]))%31 == 0 {
			return zlib.NewReader(br)
		}
		return flate.NewReader(br), nil
	case "br":
		return brotli.NewReader(br), nil
	}
	d, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(maxZstdWindow))
	if err != nil {
		return nil, err
	}
	l.done = d.Close
	return d, nil
}

func (l *lazyDecoder) Close() error {
	if l.done != nil {
		l.done()
	}
	return l.body.Close()
}
