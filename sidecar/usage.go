package sidecar

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/keybroker/keybroker/sidecar/internal/contentcoding"
)

// maxUsageBody is how much of a non-streamed JSON response is kept to read
// its usage; a larger body is charged the fallback.
const maxUsageBody = 1 << 20

// Why a response's usage could not be read (the metric's label). Such a
// response is charged what the request held (max_cost_per_request), or with
// usage_fallback = "cost" the route's cost.
const (
	fallbackMissing  = "missing" // no usage in the response
	fallbackInvalid  = "invalid" // a usage value that does not parse
	fallbackTooLarge = "too_large"
	fallbackEncoding = "encoding" // a Content-Encoding the sidecar cannot decode
)

// settleResponse charges a proxied request once the upstream answered: at
// once for a fixed cost or a usage header, or when the body has been read
// for OpenAI usage.
func settleResponse(resp *http.Response, h *hold, rt *route) {
	switch {
	case rt.usageHeader != "":
		h.settle(h.usageFromHeader(rt, resp.Header.Get(rt.usageHeader)))
	case rt.openaiUsage:
		if ce := resp.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
			dec, err := contentcoding.Decode(ce, resp.Body)
			if err != nil {
				// Passed on as it came; its usage cannot be read.
				h.settle(h.fallback(rt, "openai", fallbackEncoding))
				return
			}
			resp.Body = dec
			resp.Header.Del("Content-Encoding")
			resp.Header.Del("Content-Length")
			resp.ContentLength = -1
		}
		mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		resp.Body = &usageBody{rc: resp.Body, h: h, rt: rt, sse: mt == "text/event-stream"}
	default:
		h.settle(rt.cost)
	}
}

// usageFromHeader is what an answer whose route reads usage_header costs:
// the header's value, or the fallback when it is missing or does not parse.
func (h *hold) usageFromHeader(rt *route, v string) int64 {
	v = strings.TrimSpace(v)
	if v == "" {
		return h.fallback(rt, "header", fallbackMissing)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > maxUnitsRequest {
		return h.fallback(rt, "header", fallbackInvalid)
	}
	return n
}

// fallback is what a response whose usage cannot be read is charged: the
// hold by default, so an unreadable answer costs what the request was
// allowed to cost, not less.
func (h *hold) fallback(rt *route, source, reason string) int64 {
	h.b.met.fallbacks.WithLabelValues(source, reason).Inc()
	if rt.fallbackCost {
		return rt.cost
	}
	return h.amount
}

// usageBody passes an upstream body through and reads the OpenAI usage
// object from it: from the whole body, or for a server-sent event stream
// from the last "data:" event that carries usage.
type usageBody struct {
	rc  io.ReadCloser
	h   *hold
	rt  *route
	sse bool

	buf      []byte // the body, or the current SSE line
	overflow bool
	tokens   int64
	found    bool
	invalid  bool
	once     sync.Once
}

func (u *usageBody) Read(p []byte) (int, error) {
	n, err := u.rc.Read(p)
	u.consume(p[:n])
	if err == io.EOF {
		u.finish()
	}
	return n, err
}

func (u *usageBody) Close() error {
	u.finish()
	return u.rc.Close()
}

func (u *usageBody) consume(p []byte) {
	if !u.sse {
		if len(u.buf)+len(p) > maxUsageBody {
			u.overflow, u.buf = true, nil
		}
		if !u.overflow {
			u.buf = append(u.buf, p...)
		}
		return
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if len(u.buf)+len(p) <= maxUsageBody {
				u.buf = append(u.buf, p...)
			}
			return
		}
		if len(u.buf)+i <= maxUsageBody {
			u.buf = append(u.buf, p[:i]...)
		}
		u.event(u.buf)
		u.buf = u.buf[:0]
		p = p[i+1:]
	}
}

// event reads one SSE line; only data lines that mention usage are parsed.
func (u *usageBody) event(line []byte) {
	data, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r"), []byte("data:"))
	if !ok || !bytes.Contains(data, []byte(`"usage"`)) {
		return
	}
	u.parse(bytes.TrimSpace(data))
}

func (u *usageBody) parse(b []byte) {
	var doc struct {
		Usage *struct {
			TotalTokens *json.Number `json:"total_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		u.invalid = true
		return
	}
	if doc.Usage == nil || doc.Usage.TotalTokens == nil {
		return // streams send "usage": null until the last chunk
	}
	n, err := doc.Usage.TotalTokens.Int64()
	if err != nil || n < 0 || n > maxUnitsRequest {
		u.invalid = true
		return
	}
	u.tokens, u.found, u.invalid = n, true, false
}

func (u *usageBody) finish() {
	u.once.Do(func() {
		if u.sse && len(u.buf) > 0 {
			u.event(u.buf)
		}
		if !u.sse && !u.overflow {
			u.parse(u.buf)
		}
		u.buf = nil
		switch {
		case u.found:
			u.h.settle(u.tokens)
		case u.overflow:
			u.h.settle(u.h.fallback(u.rt, "openai", fallbackTooLarge))
		case u.invalid:
			u.h.settle(u.h.fallback(u.rt, "openai", fallbackInvalid))
		default:
			u.h.settle(u.h.fallback(u.rt, "openai", fallbackMissing))
		}
	})
}
