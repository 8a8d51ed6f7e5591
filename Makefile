# Keel: `make run` boots the appliance under QEMU, `make test` runs every test.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build image run lint test-unit test-qemu test bench clean

all: image

deps:
	scripts/deps.sh

# The binaries of the image. One list: the QEMU tests rebuild a variant with the
# same set (KEEL_BUILD_PACKAGES), so cargo's feature unification stays the same and
# only the changed crate is recompiled.
PACKAGES := keel-console keelctl keel-reset keel-timed keel-netd keel-boot keel-bundle keel-update keel-failover
export KEEL_BUILD_PACKAGES := $(PACKAGES)

# scripts/cargo-release.sh: statically linked, in target/x86_64-unknown-linux-gnu/release.
build: deps
	CARGO=$(CARGO) scripts/cargo-release.sh $(addprefix -p ,$(PACKAGES))

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
	scripts/bench-console.sh

clean:
	rm -rf build
	$(CARGO) clean
