# agentotp — see README.md. `make run` starts the server, `make test` runs
# everything CI runs.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN     := bin/agentotp

.PHONY: build run test lint test-go bench fmt clean

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

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s -count 5 ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
