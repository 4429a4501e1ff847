package contract

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/keybroker/keybroker/jwtverify"
)

// The packed form of a snapshot page: its records in one base64 string
// (KeyRecordsPage.Packed) instead of a JSON array, asked for with
// FieldFormat=FormatPacked1. A million records through Vault cost what
// Vault does per string: its JSON encoding between plugin and server and
// to the client, and the audit device's HMAC of every string of an answer.
// Packed, a page is one string of about 60 bytes a record, against some
// eight strings and 300 bytes in JSON.
//
// The format is versioned by its name and its first byte. A plugin that
// does not know the format asked for answers JSON (Format empty), which a
// verifier still reads; a verifier only asks for formats it reads. So a
// sidecar and a plugin one release apart always agree on one of the two.
//
// Layout (uvarint: encoding/binary's; str: uvarint length, then bytes):
//
//	byte 1 (the version)
//	uvarint shapes; per shape:
//	  str role, str tenant, uvarint n + n str scopes,
//	  uvarint n + n str bound_cidrs, str jkt,
//	  byte limits (1: a budget follows, 2: a rate limit follows),
//	  [varint units, varint period, varint max_cost],
//	  [8 bytes per_second (IEEE 754, big endian; finite, >= 0), uvarint burst]
//	uvarint records (at most MaxPackedKeyRecordPage, in ascending key_id
//	order); per record:
//	  12 bytes key_id, 32 bytes SHA-256, varint expires_at (Unix seconds),
//	  byte flags (1 revoked, 2 suspended, 4 replaced_by follows),
//	  [12 bytes replaced_by], uvarint shape index
const (
	FieldFormat   = "format"
	FormatPacked1 = "packed1"
)

const packedVersion1 = 1

// Sizes in the packed form: a key_id, the key's SHA-256.
const (
	packedIDLen   = 12
	packedHashLen = 32
)

// KeyShape is what many keys share: a page lists each once, and its
// records point at it.
type KeyShape struct {
	Role, Tenant       string
	Scopes, BoundCIDRs []string
	JKT                string
	Budget             *jwtverify.Budget
	RateLimit          *jwtverify.RateLimit
}

// PackedKeyRecord is one record of a packed page: its own fields, and the
// index of its shape in the page's shapes.
type PackedKeyRecord struct {
	KeyID      string
	Hash       [packedHashLen]byte
	ExpiresAt  int64 // Unix seconds
	Revoked    bool
	Suspended  bool
	ReplacedBy string
	Shape      int
}

const (
	packedRevoked    = 1
	packedSuspended  = 2
	packedReplacedBy = 4

	packedBudget = 1
	packedRate   = 2
)

// KeyRecordPacker builds a packed page: shapes first (AddShape), records
// pointing at them (AddRecord), then Bytes.
type KeyRecordPacker struct {
	shapes, records []byte
	nShapes, nRecs  int
}

// AddShape appends a shape and returns its index.
func (p *KeyRecordPacker) AddShape(s *KeyShape) int {
	b := appendStr(p.shapes, s.Role)
	b = appendStr(b, s.Tenant)
	for _, list := range [][]string{s.Scopes, s.BoundCIDRs} {
		b = binary.AppendUvarint(b, uint64(len(list)))
		for _, v := range list {
			b = appendStr(b, v)
		}
	}
	b = appendStr(b, s.JKT)
	var limits byte
	if s.Budget != nil {
		limits |= packedBudget
	}
	if s.RateLimit != nil {
		limits |= packedRate
	}
	b = append(b, limits)
	if bu := s.Budget; bu != nil {
		b = binary.AppendVarint(b, bu.Units)
		b = binary.AppendVarint(b, bu.Period)
		b = binary.AppendVarint(b, bu.MaxCost)
	}
	if rl := s.RateLimit; rl != nil {
		b = binary.BigEndian.AppendUint64(b, math.Float64bits(rl.PerSecond))
		b = binary.AppendUvarint(b, uint64(max(rl.Burst, 0)))
	}
	p.shapes = b
	p.nShapes++
	return p.nShapes - 1
}

// AddRecord appends a record; its KeyID and ReplacedBy (when set) must be
// key_ids (12 characters), and its Shape an index AddShape returned.
func (p *KeyRecordPacker) AddRecord(r *PackedKeyRecord) error {
	if len(r.KeyID) != packedIDLen || (r.ReplacedBy != "" && len(r.ReplacedBy) != packedIDLen) || r.Shape < 0 || r.Shape >= p.nShapes {
		return fmt.Errorf("key record %q cannot be packed", r.KeyID)
	}
	b := append(p.records, r.KeyID...)
	b = append(b, r.Hash[:]...)
	b = binary.AppendVarint(b, r.ExpiresAt)
	var flags byte
	if r.Revoked {
		flags |= packedRevoked
	}
	if r.Suspended {
		flags |= packedSuspended
	}
	if r.ReplacedBy != "" {
		flags |= packedReplacedBy
	}
	b = append(b, flags)
	if r.ReplacedBy != "" {
		b = append(b, r.ReplacedBy...)
	}
	p.records = binary.AppendUvarint(b, uint64(r.Shape))
	p.nRecs++
	return nil
}

// Len is the size so far of the packed page, before base64.
func (p *KeyRecordPacker) Len() int {
	return 1 + 2*binary.MaxVarintLen64 + len(p.shapes) + len(p.records)
}

// Records is how many records were added.
func (p *KeyRecordPacker) Records() int { return p.nRecs }

// Bytes is the packed page.
func (p *KeyRecordPacker) Bytes() []byte {
	b := make([]byte, 0, p.Len())
	b = append(b, packedVersion1)
	b = binary.AppendUvarint(b, uint64(p.nShapes))
	b = append(b, p.shapes...)
	b = binary.AppendUvarint(b, uint64(p.nRecs))
	return append(b, p.records...)
}

func appendStr(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// ErrPacked is a packed page that cannot be read: of a version this
// package does not know, cut short, or pointing at a shape it lacks.
var ErrPacked = errors.New("packed key records")

// UnpackKeyRecords reads a packed page into its shapes and records.
func UnpackKeyRecords(b []byte) ([]KeyShape, []PackedKeyRecord, error) {
	if len(b) == 0 || b[0] != packedVersion1 {
		return nil, nil, fmt.Errorf("%w: not of version %d", ErrPacked, packedVersion1)
	}
	r := packedReader{b: b[1:]}
	// A page has no more shapes than records, and no more records than
	// MaxPackedKeyRecordPage. Items are appended as they are read, not
	// allocated from the claimed count: a shape in memory is some twenty
	// times the 6 bytes it takes at least on the page.
	n := r.count(6)
	shapes := make([]KeyShape, 0, min(n, 64))
	for i := 0; i < n && r.err == nil; i++ {
		shapes = append(shapes, KeyShape{})
		r.shape(&shapes[i])
	}
	n = r.count(packedIDLen + packedHashLen + 3)
	recs := make([]PackedKeyRecord, 0, min(n, 64))
	for i := 0; i < n && r.err == nil; i++ {
		recs = append(recs, PackedKeyRecord{})
		r.record(&recs[i], len(shapes))
		// Ascending key_ids, as a plugin sends them: a page holding a key
		// twice (which record wins?) or out of order is damaged.
		if i > 0 && r.err == nil && recs[i].KeyID <= recs[i-1].KeyID {
			r.fail("key_ids not in ascending order")
		}
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("bytes after the records")
	}
	if r.err != nil {
		return nil, nil, r.err
	}
	return shapes, recs, nil
}

// packedReader reads a packed page; the first error sticks, and every read
// after it returns zero values.
type packedReader struct {
	b   []byte
	err error
}

func (r *packedReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrPacked, what)
	}
	r.b = nil
}

func (r *packedReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("a bad number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *packedReader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("a bad number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a count of items of at least min bytes each, refusing one
// the rest of the page could not hold or more than a page's records.
func (r *packedReader) count(min int) int {
	n := r.uvarint()
	if n > uint64(len(r.b)/min) || n > MaxPackedKeyRecordPage {
		r.fail("a count larger than the page")
		return 0
	}
	return int(n)
}

func (r *packedReader) bytes(n int) []byte {
	if n < 0 || n > len(r.b) {
		r.fail("cut short")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *packedReader) str() string {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail("cut short")
		return ""
	}
	return string(r.bytes(int(n)))
}

func (r *packedReader) strs() []string {
	n := r.count(1)
	if n == 0 {
		return nil
	}
	v := make([]string, n)
	for i := range v {
		v[i] = r.str()
	}
	return v
}

func (r *packedReader) shape(s *KeyShape) {
	s.Role, s.Tenant = r.str(), r.str()
	s.Scopes, s.BoundCIDRs = r.strs(), r.strs()
	s.JKT = r.str()
	limits := r.bytes(1)
	if len(limits) == 0 {
		return
	}
	if limits[0]&^(packedBudget|packedRate) != 0 {
		r.fail("unknown limits")
		return
	}
	if limits[0]&packedBudget != 0 {
		bu := &jwtverify.Budget{Units: r.varint(), Period: r.varint(), MaxCost: r.varint()}
		if bu.Units < 0 || bu.Period < 0 || bu.MaxCost < 0 {
			r.fail("a negative budget")
			return
		}
		s.Budget = bu
	}
	if limits[0]&packedRate != 0 {
		bits := r.bytes(8)
		if len(bits) < 8 {
			return
		}
		// JSON cannot carry NaN or an infinity, and a limiter takes +Inf
		// as no limit at all: the packed form refuses what JSON could not
		// say.
		perSecond := math.Float64frombits(binary.BigEndian.Uint64(bits))
		if math.IsNaN(perSecond) || math.IsInf(perSecond, 0) || perSecond < 0 {
			r.fail("a bad per_second")
			return
		}
		burst := r.uvarint()
		if burst > math.MaxInt32 {
			r.fail("a bad burst")
			return
		}
		s.RateLimit = &jwtverify.RateLimit{PerSecond: perSecond, Burst: int(burst)}
	}
}

func (r *packedReader) record(rec *PackedKeyRecord, shapes int) {
	id := r.bytes(packedIDLen)
	copy(rec.Hash[:], r.bytes(packedHashLen))
	rec.ExpiresAt = r.varint()
	flags := r.bytes(1)
	if r.err != nil {
		return
	}
	if flags[0]&^(packedRevoked|packedSuspended|packedReplacedBy) != 0 {
		r.fail("unknown record flags")
		return
	}
	rec.KeyID = string(id)
	rec.Revoked, rec.Suspended = flags[0]&packedRevoked != 0, flags[0]&packedSuspended != 0
	if flags[0]&packedReplacedBy != 0 {
		rec.ReplacedBy = string(r.bytes(packedIDLen))
	}
	if sh := r.uvarint(); sh >= uint64(shapes) {
		r.fail("a record of a shape the page lacks")
	} else {
		rec.Shape = int(sh)
	}
}
