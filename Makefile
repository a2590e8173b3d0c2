# sockmesh — `make help` lists the targets.

GO        ?= go
# The clang bpf2go compiles with, pinned by major version; generate-check
# also checks the exact release so committed objects are reproducible.
CLANG     ?= clang-19
CLANG_REL := 19.1.7
APT_BPF   := clang-19 llvm-19 libbpf-dev
BIN       := bin/sockmesh
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: help build test test-go-next test-unit test-kernels deps-test kube-assets generate generate-check bench clean deps-bpf

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## build bin/sockmesh (no clang needed: BPF objects are committed)
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/sockmesh

test: deps-test ## everything CI runs after generate-check: vet, unit, kernel and end-to-end tests
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...
	$(MAKE) --no-print-directory test-go-next

# The probes read programs' code and structs, which each Go release moves:
# the telemetry tests again, every program they probe built by the next Go
# (the go command fetches that toolchain from the module proxy, ~76 MB,
# cached in the module cache).
GO_NEXT ?= go1.27.3
test-go-next: ## the telemetry tests with programs built by $(GO_NEXT) (fetched by the go command)
	GOTOOLCHAIN=$(GO_NEXT) $(GO) test -count=1 -timeout 10m ./node/telemetry/... ./tests/kernel/

test-unit: ## tier 1 only (no root needed): kernel tests skip
	SOCKMESH_TEST_PRIVILEGED= $(GO) test -count=1 ./...

kube-assets: ## build and cache kube-apiserver and etcd for the Kubernetes tests (tools/kube; ~8 min cold)
	$(GO) run ./tests/kubeapi/build

test-kernels: ## kernel tests on the host kernel and, in qemu (TCG), on Debian 6.1 and 6.12 (root; kernels cached)
	bash tests/kernel/matrix.sh

# Programs the end-to-end tests and benchmarks drive (dig, musl-gcc,
# dnsmasq, wrk, sockperf, iperf3, prometheus); installed when running as root.
APT_TEST := bind9-dnsutils musl-tools dnsmasq-base wrk sockperf iperf3 prometheus
deps-test: ## install the peer programs the tests use, from apt (as root; others skip kernel tests anyway)
	@if [ "$$(id -u)" = 0 ] && ! { command -v dig && command -v musl-gcc && command -v dnsmasq && command -v wrk && command -v sockperf && command -v iperf3 && command -v prometheus; } >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_TEST) >/dev/null; fi
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory kube-assets; fi

deps-bpf: ## install the pinned BPF toolchain from apt (root)
	@command -v $(CLANG) >/dev/null && command -v llvm-strip-19 >/dev/null && test -f /usr/include/bpf/bpf_helpers.h || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_BPF) >/dev/null; }
	@$(CLANG) --version | grep -q "version $(CLANG_REL)" || \
		{ echo "$(CLANG) is not release $(CLANG_REL): generated objects would differ"; $(CLANG) --version; exit 1; }

generate: deps-bpf ## regenerate BPF objects and Go bindings with bpf2go
	$(GO) generate ./bpf/...

generate-check: generate ## regenerate and fail if the committed output differs
	@git diff --exit-code --stat -- bpf/ || { echo "generated BPF files differ from the committed ones: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- bpf/)" || { git status --porcelain -- bpf/; echo "untracked generated files"; exit 1; }

bench: deps-test ## benchmarks: sockmesh vs direct, interleaved, reported as ratios (root)
	$(GO) test -v -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./tests/bench/

clean: ## remove build output
	rm -rf bin
