# agentotp — see README.md. `make run` starts the server, `make test` runs
# everything CI runs.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN     := bin/agentotp

.PHONY: build run test lint test-go bench soak fmt clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/agentotp

run: build
	./$(BIN) serve

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
	./scripts/lint-imports.sh

test-go:
	$(GO) build ./...
	$(GO) test -race -count=1 -timeout 20m ./...

test: lint test-go

# bench starts a fresh server, measures it with `agentotp bench --baseline`
# at 1-128 clients and open loop at 1,000 cycles/s (about three minutes),
# and rewrites the generated section of BENCHMARKS.md. The Go benchmarks:
# go test -run '^$$' -bench . ./...
bench: build
	$(GO) run ./scripts/bench -bin $(BIN) -out BENCHMARKS.md

# soak runs 60 s of mixed load against a serve process and fails if its
# goroutines or heap grow.
soak:
	AGENTOTP_SOAK=60s $(GO) test -run '^TestSoak$$' -count=1 -v -timeout 10m ./cmd/agentotp/

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
