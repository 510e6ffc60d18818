# video2mp3 — run `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(abspath .)
PY := $(ROOT)/.venv/bin/python
BUF := $(ROOT)/.tools/node_modules/.bin/buf
export PYTHONPATH := $(ROOT):$(ROOT)/gen
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help
help: ## show this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: options
options: ## the upload's conversion options (bitrate, quality, channels, trim, track, normalize, tags, cover), a curl example each
	@sed -n '/<!-- options:start -->/,/<!-- options:end -->/{/<!-- options:/d;p}' README.md

.PHONY: bootstrap
bootstrap: ## install the Python environment (.venv) and buf (.tools); fast when done
	@bash dev/bootstrap.sh

.PHONY: protos
protos: bootstrap ## generate Python and type stubs from protos/ into gen/
	@bash dev/gen_protos.sh gen

.PHONY: lint
lint: bootstrap ## buf lint, stale-stub check, ruff, mypy
	@cd $(ROOT) && $(BUF) lint
	@tmp=$$(mktemp -d) && bash dev/gen_protos.sh $$tmp && \
	  if ! diff -r -q -x __pycache__ gen/video2mp3 $$tmp/video2mp3 >/dev/null; then \
	    diff -r -q -x __pycache__ gen/video2mp3 $$tmp/video2mp3; rm -rf $$tmp; \
	    echo "generated stubs in gen/ are stale: run 'make protos' and commit" >&2; exit 1; fi; rm -rf $$tmp
	@$(ROOT)/.venv/bin/ruff check .
	@$(ROOT)/.venv/bin/ruff format --check .
	@$(ROOT)/.venv/bin/mypy $(wildcard common auth storage gateway converter notifier benchmarks) testing tests dev/smtp_sink.py dev/keep_running.py dev/image_containers.py

.PHONY: fmt
fmt: bootstrap ## format the Python code with ruff
	@$(ROOT)/.venv/bin/ruff check --fix . ; $(ROOT)/.venv/bin/ruff format .

.PHONY: infra
infra: bootstrap ## install (if missing) and start RabbitMQ, MariaDB, FerretDB and the SMTP sink
	@bash dev/infra.sh up

.PHONY: infra-down
infra-down: ## stop the local infrastructure
	@bash dev/infra.sh down

.PHONY: infra-status
infra-status: ## show which local servers are up
	@bash dev/infra.sh status

.PHONY: k8s-tools
k8s-tools: ## install kustomize, kubernetes-validate and hadolint into .tools (fast when done)
	@bash dev/k8s-tools.sh install

.PHONY: manifests
manifests: bootstrap k8s-tools ## render manifests/, validate for Kubernetes 1.30 (--strict), lint the Dockerfile, check manifests against the code
	@$(PY) -m pytest -q -p no:cacheprovider tests/test_manifests.py

.PHONY: test
test: infra k8s-tools bench-tools ## run the whole test suite against real servers (tests/test_manifests.py is `make manifests`)
	@$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: unit
unit: bootstrap ## run the unit tests only: no server needed, under a minute (tests/conftest.py says what is a unit)
	@$(PY) -m pytest -m unit -q -p no:cacheprovider $(PYTEST_ARGS)

.PHONY: image
image: bootstrap k8s-tools ## build the image with Podman on a local Debian base (no registry needed); prints its size
	@bash dev/image.sh build

.PHONY: image-test
image-test: infra k8s-tools ## build the image, run every service from it as manifests/ does, README walkthrough against them
	@bash dev/image.sh test

.PHONY: cluster-test
cluster-test: infra k8s-tools ## a single-node Kubernetes built here; kubectl apply -k, walkthrough, converter kill, scaling
	@bash dev/cluster.sh test

.PHONY: image-clean
image-clean: ## remove the image, its local base and their build cache (the next build starts from nothing)
	@bash dev/image.sh clean

.PHONY: bench-tools
bench-tools: ## install Debian's ffmpeg, the benchmarks' baseline (fast when done)
	@bash benchmarks/install.sh

.PHONY: bench
bench: infra bench-tools ## measure vs baselines, write BENCHMARKS.md (QUICK=1: tiny check run; BENCH_ARGS=--help)
	@$(PY) -m benchmarks $(if $(QUICK),--quick) $(BENCH_ARGS)

.PHONY: up
up: ## run the whole system on loopback (infrastructure + five services), wait until healthy
	@bash dev/up.sh up

.PHONY: down
down: ## stop the services and the infrastructure that `make up` started
	@bash dev/up.sh down

.PHONY: certs
certs: bootstrap ## make (if missing or expiring) the local CA and the services' mutual-TLS certificates in GRPC_TLS_DIR (make up does it too)
	@source dev/defaults.env && $(PY) dev/certs.py "$$GRPC_TLS_DIR" && echo "certificates in $$GRPC_TLS_DIR"

.PHONY: logs
logs: ## follow the services' logs
	@bash dev/up.sh logs

.PHONY: status
status: ## show whether the services and the infrastructure are up
	@bash dev/up.sh status

.PHONY: mail
mail: ## list the emails the local SMTP sink received (python dev/mail.py --help for more)
	@$(PY) dev/mail.py
