package audit

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

const usage = `keybroker-audit reads Vault's file audit device log and keybroker-sidecar
decision logs (JSON lines, plain or gzip; "-" is stdin; many files are merged
in time order) and tells what happened to keybroker credentials.

  keybroker-audit history [flags] <key_id|jti|name> <file>...
      the life of one credential (or of every key minted with that name)
  keybroker-audit report [flags] <file>...
      per role and tenant over a window: mints, revocations, denials by
      reason, top spenders, keys never used, mints from new sources

Flags (before or after the arguments; -since, -until and -top: report only):
`

// Env reads the environment; os.Getenv in the binary.
type Env func(string) string

// Main runs keybroker-audit with args (without the program name) and
// returns its exit code: 0, 1 on a failure, 2 on a usage error.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv Env) int {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		fs := flags("report", stderr, new(cliFlags)) // every flag; -since, -until and -top are report's
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd := args[0]
	if cmd != "history" && cmd != "report" {
		fmt.Fprintf(stderr, "keybroker-audit: unknown command %q: history or report\n", cmd)
		return 2
	}
	var f cliFlags
	query, pos, x := parseCommand(cmd, args[1:], stderr, &f)
	if x == nil {
		x = f.check(cmd, getenv)
	}
	if x == nil {
		x = run(cmd, query, pos, &f, stdin, stdout, stderr)
	}
	if x == nil {
		return 0
	}
	if x.msg != "" {
		fmt.Fprintln(stderr, x.msg)
	}
	return x.code
}

// cliExit ends Main with code, after saying msg on stderr (when not
// empty).
type cliExit struct {
	code int
	msg  string
}

func usageError(format string, a ...any) *cliExit {
	return &cliExit{code: 2, msg: fmt.Sprintf(format, a...)}
}

// parseCommand parses cmd's flags into f and returns its arguments: the
// query (history's) and the files to read.
func parseCommand(cmd string, args []string, stderr io.Writer, f *cliFlags) (query string, pos []string, x *cliExit) {
	fs := flags(cmd, stderr, f)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", nil, &cliExit{code: 0}
		}
		return "", nil, &cliExit{code: 2} // the flag package said why
	}
	if !containsStr(Formats, f.format) {
		return "", nil, usageError("keybroker-audit: -format %q: table, json or csv", f.format)
	}
	if cmd == "history" {
		if len(pos) < 1 {
			return "", nil, usageError("keybroker-audit history: give a key_id, jti or name, then the files to read")
		}
		query, pos = pos[0], pos[1:]
	}
	if len(pos) == 0 {
		return "", nil, usageError("keybroker-audit %s: give the files to read (\"-\" is stdin)", cmd)
	}
	return query, pos, nil
}

// check reads what the flags ask for into opt (and ro for a report).
func (f *cliFlags) check(cmd string, getenv Env) *cliExit {
	f.opt = Options{PluginName: f.plugin, Context: context.Background()}
	if f.mounts != "" {
		f.opt.Mounts = strings.Split(f.mounts, ",")
	}
	if f.device != "" || f.vaultAddr != "" {
		h, x := f.hasher(getenv)
		if x != nil {
			return x
		}
		f.opt.Hasher = h
	}
	if cmd == "report" {
		return f.window()
	}
	return nil
}

// hasher is the Vault to ask for audit-hash: -vault-addr (else
// VAULT_ADDR), VAULT_TOKEN, and the device (default "file").
func (f *cliFlags) hasher(getenv Env) (Hasher, *cliExit) {
	addr := f.vaultAddr
	if addr == "" {
		addr = getenv("VAULT_ADDR")
	}
	token := getenv("VAULT_TOKEN")
	device := f.device
	if device == "" {
		device = "file"
	}
	if addr == "" || token == "" {
		return nil, usageError("keybroker-audit: matching by audit-hash needs a Vault address (-vault-addr or VAULT_ADDR) and VAULT_TOKEN")
	}
	return &VaultHasher{Addr: addr, Token: token, Device: device, Namespace: getenv("VAULT_NAMESPACE")}, nil
}

// window reads the report's window: -until (default now), and -since, a
// duration before it or a time.
func (f *cliFlags) window() *cliExit {
	now := time.Now()
	if f.until != "" {
		var err error
		if now, err = time.Parse(time.RFC3339Nano, f.until); err != nil {
			return usageError("keybroker-audit: -until %q: want RFC 3339 (2026-01-02T15:04:05Z)", f.until)
		}
	}
	f.ro.Until, f.ro.Top = now, f.top
	if d, err := time.ParseDuration(f.since); err == nil && d > 0 {
		f.ro.Since = now.Add(-d)
	} else if t, err := time.Parse(time.RFC3339Nano, f.since); err == nil {
		f.ro.Since = t
	} else {
		return usageError("keybroker-audit: -since %q: want a duration (24h) or RFC 3339 time", f.since)
	}
	return nil
}

// run reads the files and writes the history or the report.
func run(cmd, query string, pos []string, f *cliFlags, stdin io.Reader, stdout, stderr io.Writer) *cliExit {
	failed := func(err error) *cliExit { return &cliExit{code: 1, msg: fmt.Sprintf("keybroker-audit: %v", err)} }
	ins, closeAll, err := Open(pos, stdin)
	if err != nil {
		return failed(err)
	}
	defer closeAll()
	l, err := LoadLimited(ins, f.limits)
	if err != nil {
		return failed(err)
	}
	for _, in := range l.Inputs {
		if n := l.Malformed[in]; n > 0 {
			fmt.Fprintf(stderr, "keybroker-audit: %s: %s not JSON, skipped\n", in, plural(n, "line is", "lines are"))
		}
	}
	if cmd == "history" {
		err = WriteHistory(stdout, stderr, BuildHistory(l, query, f.opt), f.format)
	} else {
		err = WriteReport(stdout, stderr, BuildReport(l, f.ro, f.opt), f.format)
	}
	if err != nil {
		return failed(err)
	}
	return nil
}

type cliFlags struct {
	format, vaultAddr, device, plugin, mounts, since, until string
	top                                                     int
	limits                                                  Limits

	// What check makes of them.
	opt Options
	ro  ReportOptions
}

func flags(cmd string, stderr io.Writer, f *cliFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("keybroker-audit "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.format, "format", "table", "output: table, json or csv")
	fs.StringVar(&f.vaultAddr, "vault-addr", "", "Vault to ask for audit-hash (default $VAULT_ADDR when -audit-device is set); the token is $VAULT_TOKEN")
	fs.StringVar(&f.device, "audit-device", "", "the audit device whose log this is (\"file\"): match HMAC'd values by sys/audit-hash/<device>")
	fs.StringVar(&f.plugin, "plugin", DefaultPluginName, "mount type of keybroker's mounts in the log: the name the plugin is registered under (mounts of another type that answered as keybroker does are read too)")
	fs.StringVar(&f.mounts, "mounts", "", "more mount points to read as keybroker's, comma-separated (kb/,keys/), whatever their type")
	f.limits = Limits{}.withDefaults()
	fs.Func("max-line-bytes", "longest line read; longer ones are skipped and counted (bytes, or with KiB, MiB, GiB) (default "+sizeString(DefaultMaxLineBytes)+")", func(s string) error {
		n, err := parseSize(s)
		if err == nil && n > 1<<40 {
			err = fmt.Errorf("%q: at most 1TiB", s)
		}
		f.limits.MaxLineBytes = int(n)
		return err
	})
	fs.Func("max-decompressed-bytes", "most read of each gzip input once decompressed; the rest is skipped (bytes, or with KiB, MiB, GiB, TiB) (default "+sizeString(DefaultMaxDecompressedBytes)+")", func(s string) error {
		n, err := parseSize(s)
		f.limits.MaxDecompressedBytes = n
		return err
	})
	if cmd == "report" {
		fs.StringVar(&f.since, "since", "24h", "window start: a duration before -until, or an RFC 3339 time")
		fs.StringVar(&f.until, "until", "", "window end, RFC 3339 (default now)")
		fs.IntVar(&f.top, "top", 10, "top spenders shown")
	}
	return fs
}

// parseInterspersed parses flags wherever they are among the arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
