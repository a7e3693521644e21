# dp: build, test, benchmark. `make test` is what CI runs.
CARGO ?= cargo
CARGO_FLAGS ?= --locked

.PHONY: all build release demo demo-stop demo-django demo-django-stop test test-env fmt man bench bench-hosts bench-sync bench-deps bench-migrate bench-restart bench-django bench-scale bench-wan bench-rtt bench-store clean

all: build

build:
	$(CARGO) build $(CARGO_FLAGS)

release:
	$(CARGO) build $(CARGO_FLAGS) --release

## Deploys the bundled example site to three local hosts (target/demo) and shows where
## it answers. Run it again for an incremental second release.
demo: release
	scripts/demo.sh

demo-stop:
	-for f in target/demo/hosts/*/app.pid; do kill $$(cat $$f) 2>/dev/null; done

## The Django example (examples/django) on two local hosts under target/django: Django
## 5.2 LTS and gunicorn from wheels downloaded once, collectstatic, migrate, HUP reloads.
demo-django: release
	scripts/demo-django.sh

demo-django-stop:
	-for f in target/django/hosts/*/gunicorn.pid; do kill $$(cat $$f) 2>/dev/null; done

## Installs what the tests need, then: format check, clippy (warnings denied), all tests.
test: test-env
	$(CARGO) fmt --all --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings
	$(CARGO) test $(CARGO_FLAGS) --workspace
	# The build without what only Linux has (cfg dp_linux off: the macOS/BSD code paths).
	DP_PORTABLE_CHECK=1 $(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

test-env:
	scripts/test-env.sh

fmt:
	$(CARGO) fmt --all

## Regenerates man/ from the clap definitions (CI checks they are current).
man:
	DP_BLESS=1 $(CARGO) test $(CARGO_FLAGS) --test integration -- man::

## Benchmarks (release build; numbers on stdout).
bench: bench-hosts bench-sync bench-deps bench-migrate bench-restart bench-django bench-scale bench-wan bench-rtt bench-store

bench-hosts: test-env release
	scripts/bench/hosts.sh

bench-sync: test-env release
	scripts/bench/sync.sh

bench-deps: test-env release
	scripts/bench/deps.sh

bench-migrate: test-env release
	scripts/bench/migrate.sh

bench-restart: test-env release
	scripts/bench/restart.sh

bench-django: test-env release
	scripts/bench/django.sh

bench-scale: test-env release
	scripts/bench/scale.sh

bench-wan: test-env release
	scripts/bench/wan.sh

bench-rtt: test-env release
	scripts/bench/rtt.sh

bench-store: test-env release
	scripts/bench/store.sh

clean:
	$(CARGO) clean
