package audit

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// Auth is the auth block of a Vault audit entry: who made the request.
type Auth struct {
	ClientToken string            `json:"client_token,omitempty"`
	Accessor    string            `json:"accessor,omitempty"`
	DisplayName string            `json:"display_name,omitempty"`
	EntityID    string            `json:"entity_id,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Policies    []string          `json:"policies,omitempty"`
	TokenType   string            `json:"token_type,omitempty"`
	TokenTTL    int64             `json:"token_ttl,omitempty"`
}

// Request is the request block of a Vault audit entry.
type Request struct {
	ID                  string                 `json:"id"`
	Operation           string                 `json:"operation"`
	Path                string                 `json:"path"`
	Data                map[string]interface{} `json:"data,omitempty"`
	RemoteAddress       string                 `json:"remote_address,omitempty"`
	ClientToken         string                 `json:"client_token,omitempty"`
	ClientTokenAccessor string                 `json:"client_token_accessor,omitempty"`
	MountType           string                 `json:"mount_type,omitempty"`
	MountPoint          string                 `json:"mount_point,omitempty"`
	MountAccessor       string                 `json:"mount_accessor,omitempty"`
}

// Secret is what an audit entry shows of a response's lease.
type Secret struct {
	LeaseID string `json:"lease_id"`
}

// Response is the response block of a Vault audit entry.
type Response struct {
	Data   map[string]interface{} `json:"data,omitempty"`
	Secret *Secret                `json:"secret,omitempty"`
	Auth   *Auth                  `json:"auth,omitempty"`
}

// Record is one Vault request: its request entry and its response entry,
// paired by request.id. Either may be missing from the inputs.
type Record struct {
	ID       string
	Time     time.Time // of the request entry, else of the response entry
	RespTime time.Time // zero without a response entry
	Auth     *Auth
	Request  *Request
	Response *Response // nil when no response entry was read
	// Error is the entry's top-level error (a Go error from the handler, or
	// Vault's own, like "permission denied"); an error answer
	// (logical.ErrorResponse) is response.data.error instead.
	Error  string
	Source string // input:line of the first entry read
	seq    int
}

// Failed says whether the request failed: an error, or an error answer.
func (r *Record) Failed() bool {
	if r.Error != "" {
		return true
	}
	if r.Response != nil {
		if _, ok := r.Response.Data["error"]; ok {
			return true
		}
	}
	return false
}

// reqData returns request data field k, "" when absent or not a string.
func (r *Record) reqData(k string) string {
	if r.Request == nil {
		return ""
	}
	return str(r.Request.Data[k])
}

// respData returns response data field k as a string, "" when absent.
func (r *Record) respData(k string) string {
	if r.Response == nil {
		return ""
	}
	return str(r.Response.Data[k])
}

func (r *Record) leaseID() string {
	if r.Response == nil || r.Response.Secret == nil {
		return ""
	}
	return r.Response.Secret.LeaseID
}

// Log is everything read from the inputs, in time order.
type Log struct {
	Records   []*Record
	Decisions []*Decision
	// Skipped counts lines that were neither a Vault audit entry nor a
	// decision, by input; Malformed the lines that were not JSON; TooLong
	// the lines over Limits.MaxLineBytes, skipped unread. Cut names the
	// gzip inputs read only up to Limits.MaxDecompressedBytes.
	Skipped   map[string]int
	Malformed map[string]int
	TooLong   map[string]int
	Cut       map[string]bool
	Inputs    []string

	limits Limits
}

// Input is one stream to read: a file's name and contents.
type Input struct {
	Name string
	R    io.Reader
}

// Open opens the named files for Load; "-" is stdin. The caller closes
// what it returns.
func Open(names []string, stdin io.Reader) ([]Input, func(), error) {
	var ins []Input
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	for _, n := range names {
		if n == "-" {
			ins = append(ins, Input{Name: "stdin", R: stdin})
			continue
		}
		f, err := os.Open(n)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		files = append(files, f)
		ins = append(ins, Input{Name: n, R: f})
	}
	return ins, closeAll, nil
}

// line is either kind of input line: a Vault audit entry (type request or
// response) or a sidecar decision (type decision).
type line struct {
	Type     string          `json:"type"`
	Time     string          `json:"time"`
	Auth     *Auth           `json:"auth"`
	Request  *Request        `json:"request"`
	Response *Response       `json:"response"`
	Error    json.RawMessage `json:"error"`
}

// heavy paths answer with data no history needs (key-record pages, the
// revocation feed, the JWKS); it is dropped on reading to spare memory.
var heavy = []string{"key-records", "revocations", "jwks", ".well-known"}

// builtin are Vault's own mount types. Their entries matter for who was
// seen where and when, and for lease and token revocations; their data for
// nothing else, so it is dropped on reading.
var builtin = map[string]bool{"system": true, "token": true, "identity": true, "cubbyhole": true, "kv": true, "approle": true,
	"userpass": true, "ldap": true, "jwt": true, "oidc": true, "kubernetes": true, "cert": true, "aws": true, "azure": true,
	"gcp": true, "github": true, "pki": true, "transit": true, "database": true, "ssh": true, "totp": true, "ns_system": true}

func dataless(r *Request) bool {
	p := r.Path
	if strings.HasPrefix(p, "sys/leases/") || strings.HasPrefix(p, "sys/renew") || strings.HasPrefix(p, "sys/revoke") ||
		strings.HasPrefix(p, "auth/token/revoke") {
		return false
	}
	return builtin[r.MountType]
}

// Load reads every input (plain or gzip-compressed, told by its first
// bytes) within the default Limits, pairs Vault's request and response
// entries by request.id and sorts everything by time.
func Load(inputs []Input) (*Log, error) { return LoadLimited(inputs, Limits{}) }

// LoadLimited is Load within lim (zero fields: the defaults).
func LoadLimited(inputs []Input, lim Limits) (*Log, error) {
	lim = lim.withDefaults()
	l := &Log{Skipped: map[string]int{}, Malformed: map[string]int{}, TooLong: map[string]int{}, Cut: map[string]bool{}, limits: lim}
	byID := map[string]*Record{}
	seq := 0
	lr := &lineReader{max: lim.MaxLineBytes}
	for _, in := range inputs {
		l.Inputs = append(l.Inputs, in.Name)
		br := bufio.NewReaderSize(in.R, 1<<16)
		lr.r = br
		if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
			gz, err := gzip.NewReader(br)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", in.Name, err)
			}
			lr.r = bufio.NewReaderSize(&capReader{r: gz, n: lim.MaxDecompressedBytes}, 1<<16)
		}
		n := 0
		for {
			b, long, err := lr.next()
			if errors.Is(err, errCapped) {
				l.Cut[in.Name] = true // and the partial line is dropped
				break
			}
			if err == nil || long || len(b) > 0 { // a line, if empty
				n++
				seq++
			}
			if long {
				l.TooLong[in.Name]++
			} else if len(b) > 0 {
				l.add(byID, bytes.TrimSpace(b), fmt.Sprintf("%s:%d", in.Name, n), in.Name, seq)
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", in.Name, err)
			}
		}
	}
	sort.SliceStable(l.Records, func(i, j int) bool {
		a, b := l.Records[i], l.Records[j]
		if !a.Time.Equal(b.Time) {
			return a.Time.Before(b.Time)
		}
		return a.seq < b.seq
	})
	sort.SliceStable(l.Decisions, func(i, j int) bool {
		a, b := l.Decisions[i], l.Decisions[j]
		if !a.At.Equal(b.At) {
			return a.At.Before(b.At)
		}
		return a.seq < b.seq
	})
	return l, nil
}

// add reads one line: a decision, or a Vault audit entry paired with its
// other half in byID; anything else is counted as skipped or malformed.
func (l *Log) add(byID map[string]*Record, b []byte, src, input string, seq int) {
	if len(b) == 0 {
		return
	}
	var ln line
	if err := json.Unmarshal(b, &ln); err != nil {
		l.Malformed[input]++
		return
	}
	switch ln.Type {
	case contract.DecisionType:
		l.addDecision(b, src, input, seq)
	case "request", "response":
		if ln.Request == nil {
			l.Skipped[input]++
			return
		}
		l.addEntry(byID, &ln, src, seq)
	default:
		l.Skipped[input]++
	}
}

// addEntry pairs a Vault audit entry with the other half of its request,
// by request.id, dropping the data nothing needs.
func (l *Log) addEntry(byID map[string]*Record, ln *line, src string, seq int) {
	t, _ := time.Parse(time.RFC3339Nano, ln.Time)
	ln.dropData()
	rec := byID[ln.Request.ID]
	if rec == nil || ln.Request.ID == "" {
		rec = &Record{ID: ln.Request.ID, Source: src, seq: seq}
		l.Records = append(l.Records, rec)
		if ln.Request.ID != "" {
			byID[ln.Request.ID] = rec
		}
	}
	if rec.Auth == nil || ln.Auth != nil && ln.Type == "response" {
		rec.Auth = ln.Auth
	}
	if rec.Request == nil || ln.Type == "response" {
		rec.Request = ln.Request
	}
	if e := errorText(ln.Error); e != "" {
		rec.Error = e
	}
	if ln.Type == "request" {
		if rec.Time.IsZero() || !rec.RespTime.IsZero() && rec.Time.Equal(rec.RespTime) {
			rec.Time = t
		}
		return
	}
	rec.Response = ln.Response
	if rec.Response == nil {
		rec.Response = &Response{}
	}
	rec.RespTime = t
	if rec.Time.IsZero() {
		rec.Time = t
	}
}

// dropData drops, on reading, the data no history needs: heavy answers,
// and the data of Vault's own mounts.
func (ln *line) dropData() {
	if ln.Response != nil && ln.Response.Data != nil {
		for _, h := range heavy {
			if strings.Contains(ln.Request.Path, h) {
				ln.Response.Data = nil
				break
			}
		}
	}
	if dataless(ln.Request) {
		ln.Request.Data = nil
		if ln.Response != nil {
			ln.Response.Data, ln.Response.Auth = nil, nil
		}
	}
}

// errorText reads the top-level error, a string in every Vault version
// we know; anything else is shown as its JSON.
func errorText(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// str renders a data value: strings as they are, numbers without
// exponent, anything else "".
func str(v interface{}) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		if x == float64(int64(x)) {
			return fmt.Sprintf("%d", int64(x))
		}
		return fmt.Sprint(x)
	case bool:
		if x {
			return "true"
		}
		return "false"
	case json.Number:
		return x.String()
	}
	return ""
}

// strs renders a list (or a comma-separated string) of data values.
func strs(v interface{}) []string {
	switch x := v.(type) {
	case []interface{}:
		out := make([]string, 0, len(x))
		for _, e := range x {
			out = append(out, str(e))
		}
		return out
	case string:
		if x == "" {
			return nil
		}
		if isHMAC(x) {
			return []string{x}
		}
		var out []string
		for _, p := range strings.Split(x, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
		return out
	}
	return nil
}
