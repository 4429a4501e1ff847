package backend

import (
	"encoding/base64"

	"github.com/keybroker/keybroker/contract"
)

// snapshotWriter gathers a snapshot page's records, as JSON records or
// packed (contract.FormatPacked1), and says when the page is full.
type snapshotWriter struct {
	max  int  // records
	full bool // the next record would pass MaxKeyRecordPageBytes
	// JSON: the records and the bound of their size.
	records []contract.KeyRecord
	size    int
	// Packed: the page, and the index in it of each shape it lists.
	packer *contract.KeyRecordPacker
	shapes map[*indexedShape]int
}

// packedRecordBound bounds a packed record's bytes: key_id, hash,
// expires_at, flags, replaced_by and its shape's index.
const packedRecordBound = 12 + 32 + 10 + 1 + 12 + 10

// packedEnvelope is what a page's answer holds besides its packed
// records, with room to spare: the other fields, metered tenants and
// suspended roles are bounded apart (maxRecordFilter names, Vault's own
// bounds on names).
const packedEnvelope = 64 << 10

func newSnapshotWriter(packed bool) *snapshotWriter {
	if packed {
		return &snapshotWriter{max: contract.MaxPackedKeyRecordPage, packer: &contract.KeyRecordPacker{}, shapes: map[*indexedShape]int{}}
	}
	return &snapshotWriter{max: contract.MaxKeyRecordPage}
}

func (w *snapshotWriter) count() int {
	if w.packer != nil {
		return w.packer.Records()
	}
	return len(w.records)
}

// add adds the record rec of key_id id, unless it would take the page past
// MaxKeyRecordPageBytes (and it is not the first): then it returns false
// and the page is full.
func (w *snapshotWriter) add(id string, rec *indexedRecord) bool {
	if w.packer == nil {
		if w.size += rec.shape.size; w.size > contract.MaxKeyRecordPageBytes && len(w.records) > 0 {
			w.full = true
			return false
		}
		w.records = append(w.records, rec.record(id))
		return true
	}
	shape, known := w.shapes[rec.shape]
	grow := packedRecordBound
	if !known {
		grow += len(rec.shape.key)
	}
	if base64.StdEncoding.EncodedLen(w.packer.Len()+grow) > contract.MaxKeyRecordPageBytes-packedEnvelope && w.packer.Records() > 0 {
		w.full = true
		return false
	}
	if !known {
		shape = w.packer.AddShape(&rec.shape.KeyShape)
		w.shapes[rec.shape] = shape
	}
	p := rec.packed(id, shape)
	if err := w.packer.AddRecord(&p); err != nil {
		// Only a key_id not of 12 characters gets here, and the listing
		// holds none (getKeys skips them): leave it out, as a verifier
		// would drop it.
		return true
	}
	return true
}

// finish puts the records in page.
func (w *snapshotWriter) finish(page *contract.KeyRecordsPage) {
	if w.packer == nil {
		page.Records = w.records
		if page.Records == nil {
			page.Records = []contract.KeyRecord{}
		}
		return
	}
	page.Format = contract.FormatPacked1
	page.Packed = base64.StdEncoding.EncodeToString(w.packer.Bytes())
}
