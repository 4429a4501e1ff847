# keybroker: `make dev` runs Vault with the plugin; `make test` runs every test.
VERSION ?= v0.1.0-dev
LDFLAGS := -X github.com/keybroker/keybroker/internal/version.Version=$(VERSION)
# make dev's addresses: Vault, the sidecar's proxy, its /verify, /healthz and
# /metrics, and the demo service behind it (make cluster's nodes pick free ports).
DEV_ADDR ?= 127.0.0.1:8200
DEV_SIDECAR_LISTEN ?= 127.0.0.1:8080
DEV_SIDECAR_AUTH_LISTEN ?= 127.0.0.1:8081
DEV_UPSTREAM_ADDR ?= 127.0.0.1:9000
DEV_PORTS = -proxy $(DEV_SIDECAR_LISTEN) -auth $(DEV_SIDECAR_AUTH_LISTEN) -service $(DEV_UPSTREAM_ADDR)
FUZZTIME ?= 15s
# Minimising each new input may take 60 s by default, longer than a short run.
FUZZMINIMIZE ?= 5s
GO ?= go

.PHONY: all build vault test unit e2e fuzz bench dev cluster fmt vet clean docs

all: build

## build: every binary of the project into bin/
build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/ ./cmd/...

## vault: a real vault (PATH if >= 1.15, else bin/vault built from source)
vault:
	./scripts/ensure-vault.sh

## test: unit tests, end-to-end tests against a real Vault, and short fuzz runs
test: vault vet
	$(GO) test -count=1 -timeout 20m ./...
	$(MAKE) --no-print-directory fuzz

## fuzz: fuzz the JWT parser, the DPoP proof checker and the sidecar's decision (FUZZTIME=10m for longer)
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzVerifySignature -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./jwtverify/
	$(GO) test -run '^$$' -fuzz FuzzVerifyProof -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./jwtverify/
	$(GO) test -run '^$$' -fuzz FuzzDecide -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./sidecar/

## unit: every test that needs no Vault (all but e2e/)
unit:
	$(GO) test -count=1 ./apikey/... ./jwtverify/... ./contract/... ./backend/... ./sidecar/... ./audit/...

## e2e: only the end-to-end tests
e2e: vault
	$(GO) test -count=1 -timeout 20m -v ./e2e/...

## dev: a dev Vault on $(DEV_ADDR) with the plugin enabled at keybroker/
dev: build vault
	$(GO) run ./scripts/dev -addr $(DEV_ADDR) $(DEV_PORTS) -plugin bin/vault-plugin-secrets-keybroker -sidecar bin/keybroker-sidecar -version $(VERSION)

## cluster: make dev on a 3-node Raft HA cluster (kill the leader, watch failover)
cluster: build vault
	$(GO) run ./scripts/dev -cluster -dir .cluster $(DEV_PORTS) -plugin bin/vault-plugin-secrets-keybroker -sidecar bin/keybroker-sidecar -version $(VERSION)

## docs: regenerate docs/reference/ from the code (make test fails when it is stale)
docs:
	$(GO) run ./scripts/docgen

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

fmt:
	gofmt -w .

clean:
	rm -rf bin .dev .cluster

## bench: the real stack on loopback, one table (needs wrk); not part of make test
bench: build vault
	@command -v wrk >/dev/null || { echo "make bench needs wrk: apt-get install wrk"; exit 1; }
	$(GO) run ./scripts/bench -plugin bin/vault-plugin-secrets-keybroker -sidecar bin/keybroker-sidecar -version $(VERSION) $(BENCHFLAGS)
