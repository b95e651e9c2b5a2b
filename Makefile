# `make test` is the whole CI gate; .ci/run calls it on a fresh machine.
GO ?= go

.PHONY: test deps fmt-check vet unit fuzz bench demo build compare compare-pop3 compare-profile

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
# of the POP3 framer; the anchors matter because -fuzz must match exactly
# one target. Counts, not durations: Go 1.26's coordinator can report a
# bare "context deadline exceeded" failure when a -fuzztime duration ends
# mid-input (go.dev/issue/75804, fixed in Go 1.27); a count has no
# deadline to race. Each is about 20 s on a 2-core machine.
FUZZ_READ_COMMAND ?= 1500000x
FUZZ_OAUTH ?= 400000x
FUZZ_POP3 ?= 300000x
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzReadCommand$$' -fuzztime $(FUZZ_READ_COMMAND) ./proxy/wire
	$(GO) test -run '^$$' -fuzz '^FuzzOAuthMessage$$' -fuzztime $(FUZZ_OAUTH) ./proxy
	$(GO) test -run '^$$' -fuzz '^FuzzPOP3Framer$$' -fuzztime $(FUZZ_POP3) ./proxy

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

demo:
	$(GO) run ./cmd/portico demo

# Portico against nginx, a Dovecot proxy and Dovecot itself on this
# machine, with portico bench (as root; a few minutes). Not part of test.
# BEFORE=REV (make compare BEFORE=1bb57ee) adds a column for Portico as
# built from that git revision, for before/after figures from one run.
compare:
	bash scripts/compare-peers.sh

# Only the login rows of compare, IMAP and POP3 side by side (pop3s at
# every front end; a minute or two).
compare-pop3:
	SUITE=login bash scripts/compare-peers.sh

# Where each front end's CPU per login goes (socket system calls,
# cryptography, the rest), from perf record under 64 clients (as root;
# installs linux-perf when missing; a few minutes).
compare-profile:
	SUITE=profile bash scripts/compare-peers.sh

build:
	$(GO) build ./...
	$(GO) build -o bin/portico ./cmd/portico
