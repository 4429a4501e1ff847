package audit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// renamed writes testdata/name with keybroker's mount registered under
// another name and mounted elsewhere, and loads it.
func renamed(t *testing.T, name, mountType, mount string) *Log {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(b), `"mount_type":"`+DefaultPluginName+`"`, `"mount_type":"`+mountType+`"`)
	s = strings.ReplaceAll(s, `"keybroker/`, `"`+mount)
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	ins, closeAll, err := Open([]string{p}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll()
	l, err := Load(ins)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// A plugin registered under another name than the default is found by
// what its mount answered; -plugin and -mounts name it too; and a log
// with no keybroker mount says so, and how to name one.
func TestMountDiscovery(t *testing.T) {
	for _, tc := range []struct {
		name      string
		log       string // testdata file
		mountType string
		opt       Options
		found     bool   // the credential's mint is found
		note      string // in the notes; "" for none about mounts
	}{
		{"default name", "vault-audit.log", DefaultPluginName, Options{}, true, ""},
		{"other name, minted keys", "vault-audit.log", "keybroker", Options{}, true, `read as keybroker's, from what they answered: kb/ (type "keybroker")`},
		{"other name, lifecycle", "lifecycle.log", "kb-v2", Options{}, true, `kb/ (type "kb-v2")`},
		{"other name, -plugin", "vault-audit.log", "keybroker", Options{PluginName: "keybroker"}, true, ""},
		{"other name, -mounts", "vault-audit.log", "keybroker", Options{Mounts: []string{"kb"}}, true, ""},
		{"no keybroker mount", "vault-audit.log", "kv", Options{}, false, "no keybroker mount in the audit log: no entry is on a mount of type \"" + DefaultPluginName + "\", and none answered as keybroker does; name the plugin with -plugin <registered name>, or its mounts with -mounts <path>/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := renamed(t, tc.log, tc.mountType, "kb/")
			id := auditedKey
			if tc.log == "lifecycle.log" {
				id = "kA1kA1kA1kA1"
			}
			h := BuildHistory(l, id, tc.opt)
			if found := len(h.Credentials) == 1 && h.Credentials[0].ID == id && !h.Credentials[0].NotMinted; found != tc.found {
				t.Fatalf("history of %s: %d credentials, want found=%v (notes %q)", id, len(h.Credentials), tc.found, h.Notes)
			}
			mountNotes := 0
			for _, n := range h.Notes {
				if strings.Contains(n, "keybroker mount") || strings.Contains(n, "read as keybroker's") {
					mountNotes++
					if tc.note == "" || !strings.Contains(n, tc.note) {
						t.Errorf("note %q, want %q", n, tc.note)
					}
				}
			}
			if (tc.note != "") != (mountNotes == 1) {
				t.Errorf("notes %q, want one saying %q", h.Notes, tc.note)
			}
		})
	}
}
