# genfleet — make targets. `make test` installs what the tests need when it
# is missing (redis-server and chromium from Debian's packages when run as
# root, versitygw with go install), then vets and runs every test with the
# race detector.

GO        ?= go
GOBIN     := $(shell $(GO) env GOPATH)/bin
VERSITYGW_VERSION := v1.8.0
export PATH := $(GOBIN):$(PATH)

.PHONY: all build test test-short vet fmt deps dev clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/genfleet ./cmd/genfleet

deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing: install it (e.g. apt-get install redis-server)" >&2; exit 1; \
	  fi; }
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || [ -n "$$GENFLEET_CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (for the web page's browser test)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is missing: install it (e.g. apt-get install chromium) or set GENFLEET_CHROMIUM" >&2; exit 1; \
	  fi; }
	@command -v versitygw >/dev/null 2>&1 || { \
	  echo "installing versitygw $(VERSITYGW_VERSION) (takes a few minutes)"; \
	  $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION); }

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

test: deps vet
	GENFLEET_REQUIRE_SERVICES=1 $(GO) test -race -timeout 20m ./...

test-short: vet
	$(GO) test -short ./...

dev:
	$(GO) run ./cmd/genfleet dev

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
