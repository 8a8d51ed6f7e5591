# Keel: `make run` boots the appliance under QEMU, `make test` runs every test.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build image run lint test-unit test-qemu test bench clean

all: image

deps:
	scripts/deps.sh

build: deps
	$(CARGO) build --release --locked -p keel-console -p keelctl -p keel-reset -p keel-timed -p keel-netd -p keel-boot -p keel-bundle -p keel-update -p keel-failover

image: build
	image/build.sh

run: image
	scripts/run-vm.sh

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

test-unit: deps
	$(CARGO) test --workspace --exclude keel-qemu-tests --locked

test-qemu: image
	KEEL_QEMU_TESTS=1 $(CARGO) test -p keel-qemu-tests --locked -- --test-threads=1

test: lint test-unit test-qemu

bench: image
	scripts/bench.sh
	scripts/bench-time.sh
	scripts/bench-net.sh
	scripts/bench-update.sh
	scripts/bench-update-downtime.sh
	scripts/bench-failover.sh

clean:
	rm -rf build
	$(CARGO) clean
