// Command keybroker-audit tells auditors what happened to keybroker
// credentials, from Vault's file audit device log and keybroker-sidecar
// decision logs. See the README's keybroker-audit section.
package main

import (
	"fmt"
	"os"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/internal/version"
)

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "-version" || os.Args[1] == "--version") {
		fmt.Println("keybroker-audit", version.Version)
		return
	}
	os.Exit(audit.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}
