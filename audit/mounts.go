package audit

import (
	"fmt"
	"sort"
	"strings"
)

// Which mounts are keybroker's. A mount's type in the audit log is the
// name the plugin was registered under, which is the operator's choice:
// the default name, -plugin and -mounts name mounts, and discoverMounts
// finds the others by what they answered, so that a plugin registered as
// "keybroker" is not silently left out.

// discoverMounts adds to opt.Mounts every mount that answered as only
// keybroker does, and notes the mounts it added, or that there are none.
func (e *engine) discoverMounts() {
	known := map[string]bool{}
	for _, m := range e.opt.Mounts {
		known[m] = true
	}
	found := map[string]string{} // mount point → its type
	kb := false
	for _, r := range e.log.Records {
		if r.Request == nil {
			continue
		}
		q := r.Request
		if q.MountType == e.opt.PluginName || known[q.MountPoint] {
			kb = true
			continue
		}
		if q.MountPoint == "" || builtin[q.MountType] || found[q.MountPoint] != "" || !answersAsKeybroker(r) {
			continue
		}
		found[q.MountPoint] = q.MountType
	}
	var added []string
	for m, typ := range found {
		e.opt.Mounts = append(e.opt.Mounts, m)
		added = append(added, fmt.Sprintf("%s (type %q)", m, typ))
	}
	sort.Strings(added)
	switch {
	case len(added) > 0:
		e.notes = append(e.notes, fmt.Sprintf("read as keybroker's, from what they answered: %s; their type is not %q (say it with -plugin, or the mounts with -mounts)",
			strings.Join(added, ", "), e.opt.PluginName))
	case !kb && len(e.log.Records) > 0:
		e.notes = append(e.notes, fmt.Sprintf("no keybroker mount in the audit log: no entry is on a mount of type %q, and none answered as keybroker does; name the plugin with -plugin <registered name>, or its mounts with -mounts <path>/",
			e.opt.PluginName))
	}
}

// answersAsKeybroker tells an answer only keybroker gives: a key minted
// (keys/<role> with a key_id and a key), a JWT minted (token/<role> with a
// jti and a token), a budget reservation, a verify's verdict.
func answersAsKeybroker(r *Record) bool {
	if r.Response == nil || r.Failed() {
		return false
	}
	segs := strings.Split(strings.TrimPrefix(r.Request.Path, r.Request.MountPoint), "/")
	has := func(ks ...string) bool {
		for _, k := range ks {
			if _, ok := r.Response.Data[k]; !ok {
				return false
			}
		}
		return true
	}
	switch {
	case len(segs) == 2 && segs[0] == "keys":
		return has("key_id", "key")
	case len(segs) == 2 && segs[0] == "token":
		return has("jti", "token")
	case len(segs) == 2 && segs[0] == "budget" && segs[1] == "reserve":
		return has("reservation_id", "granted")
	case len(segs) == 1 && segs[0] == "verify":
		return has("valid")
	}
	return false
}
