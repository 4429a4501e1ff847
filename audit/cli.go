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
	fs := flags(cmd, stderr, &f)
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if !containsStr(Formats, f.format) {
		fmt.Fprintf(stderr, "keybroker-audit: -format %q: table, json or csv\n", f.format)
		return 2
	}
	var query string
	if cmd == "history" {
		if len(pos) < 1 {
			fmt.Fprintln(stderr, "keybroker-audit history: give a key_id, jti or name, then the files to read")
			return 2
		}
		query, pos = pos[0], pos[1:]
	}
	if len(pos) == 0 {
		fmt.Fprintf(stderr, "keybroker-audit %s: give the files to read (\"-\" is stdin)\n", cmd)
		return 2
	}
	opt := Options{PluginName: f.plugin, Context: context.Background()}
	if f.mounts != "" {
		opt.Mounts = strings.Split(f.mounts, ",")
	}
	if f.device != "" || f.vaultAddr != "" {
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
			fmt.Fprintln(stderr, "keybroker-audit: matching by audit-hash needs a Vault address (-vault-addr or VAULT_ADDR) and VAULT_TOKEN")
			return 2
		}
		opt.Hasher = &VaultHasher{Addr: addr, Token: token, Device: device, Namespace: getenv("VAULT_NAMESPACE")}
	}
	var ro ReportOptions
	if cmd == "report" {
		now := time.Now()
		if f.until != "" {
			if now, err = time.Parse(time.RFC3339Nano, f.until); err != nil {
				fmt.Fprintf(stderr, "keybroker-audit: -until %q: want RFC 3339 (2026-01-02T15:04:05Z)\n", f.until)
				return 2
			}
		}
		ro.Until, ro.Top = now, f.top
		if d, err := time.ParseDuration(f.since); err == nil && d > 0 {
			ro.Since = now.Add(-d)
		} else if t, err := time.Parse(time.RFC3339Nano, f.since); err == nil {
			ro.Since = t
		} else {
			fmt.Fprintf(stderr, "keybroker-audit: -since %q: want a duration (24h) or RFC 3339 time\n", f.since)
			return 2
		}
	}

	ins, closeAll, err := Open(pos, stdin)
	if err != nil {
		fmt.Fprintf(stderr, "keybroker-audit: %v\n", err)
		return 1
	}
	defer closeAll()
	l, err := LoadLimited(ins, f.limits)
	if err != nil {
		fmt.Fprintf(stderr, "keybroker-audit: %v\n", err)
		return 1
	}
	for _, in := range l.Inputs {
		if n := l.Malformed[in]; n > 0 {
			fmt.Fprintf(stderr, "keybroker-audit: %s: %s not JSON, skipped\n", in, plural(n, "line is", "lines are"))
		}
	}
	if cmd == "history" {
		err = WriteHistory(stdout, stderr, BuildHistory(l, query, opt), f.format)
	} else {
		err = WriteReport(stdout, stderr, BuildReport(l, ro, opt), f.format)
	}
	if err != nil {
		fmt.Fprintf(stderr, "keybroker-audit: %v\n", err)
		return 1
	}
	return 0
}

type cliFlags struct {
	format, vaultAddr, device, plugin, mounts, since, until string
	top                                                     int
	limits                                                  Limits
}

func flags(cmd string, stderr io.Writer, f *cliFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("keybroker-audit "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.format, "format", "table", "output: table, json or csv")
	fs.StringVar(&f.vaultAddr, "vault-addr", "", "Vault to ask for audit-hash (default $VAULT_ADDR when -audit-device is set); the token is $VAULT_TOKEN")
	fs.StringVar(&f.device, "audit-device", "", "the audit device whose log this is (\"file\"): match HMAC'd values by sys/audit-hash/<device>")
	fs.StringVar(&f.plugin, "plugin", DefaultPluginName, "mount type of keybroker's mounts in the log")
	fs.StringVar(&f.mounts, "mounts", "", "more mount points to read as keybroker's, comma-separated (kb/,keys/)")
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
