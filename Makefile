# dp: build, test, benchmark. `make test` is what CI runs.
CARGO ?= cargo
CARGO_FLAGS ?= --locked

.PHONY: all build release test test-env fmt man bench bench-hosts clean

all: build

build:
	$(CARGO) build $(CARGO_FLAGS)

release:
	$(CARGO) build $(CARGO_FLAGS) --release

## Installs what the tests need, then: format check, clippy (warnings denied), all tests.
test: test-env
	$(CARGO) fmt --all --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings
	$(CARGO) test $(CARGO_FLAGS) --workspace

test-env:
	scripts/test-env.sh

fmt:
	$(CARGO) fmt --all

## Regenerates man/ from the clap definitions (CI checks they are current).
man:
	DP_BLESS=1 $(CARGO) test $(CARGO_FLAGS) --test integration -- man::

## Benchmarks (release build; numbers on stdout).
bench: bench-hosts

bench-hosts: test-env release
	scripts/bench/hosts.sh

clean:
	$(CARGO) clean
