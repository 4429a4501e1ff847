// Command vault is Vault itself, built from its Go module so that tests and
// `make dev` can run a real server on machines without a packaged vault.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
