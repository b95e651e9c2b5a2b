# `make test` is the whole CI gate; .ci/run calls it on a fresh machine.
GO ?= go
FUZZTIME ?= 20s

.PHONY: test deps fmt-check vet unit fuzz bench demo build compare compare-pop3

test: deps fmt-check vet unit fuzz

deps:
	bash scripts/install-test-deps.sh

fmt-check:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then \
		echo "gofmt: these files need formatting (run gofmt -w):"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 -timeout 20m ./...

# A short fuzz run of the pre-auth codec, of the OAuth SASL messages and
# of the POP3 framer;
# the anchors matter because -fuzz must match exactly one target.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzReadCommand$$' -fuzztime $(FUZZTIME) ./proxy/wire
	$(GO) test -run '^$$' -fuzz '^FuzzOAuthMessage$$' -fuzztime $(FUZZTIME) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzPOP3Framer$$' -fuzztime $(FUZZTIME) ./proxy

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

demo:
	$(GO) run ./cmd/portico demo

# Portico against nginx, a Dovecot proxy and Dovecot itself on this
# machine, with portico bench (as root; a few minutes). Not part of test.
compare:
	bash scripts/compare-peers.sh

# Only the login rows of compare, IMAP and POP3 side by side (pop3s at
# every front end; a minute or two).
compare-pop3:
	SUITE=login bash scripts/compare-peers.sh

build:
	$(GO) build ./...
	$(GO) build -o bin/portico ./cmd/portico
