# Two commands do everything on a fresh machine:
#   make run   — set up, train and register a model if none exists, start the whole suite behind Envoy
#   make test  — set up and run every test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
GENERATED := gen/churn.pb
PROTOS := $(wildcard protos/churn/v1/*.proto)
PYTEST_ARGS ?=
BUF := .tools/node_modules/.bin/buf

.PHONY: setup gen model secrets run test test-fast fuzz lint-protos clean

setup: $(INSTALLED) $(GENERATED) $(BUF)

# The virtualenv with every runtime and test dependency; a .pth puts the repo and gen/ on its path.
$(INSTALLED): pyproject.toml
	@echo "==> creating virtualenv $(VENV) and installing dependencies (first time: a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], 'churn_suite.pth').write_text('$(CURDIR)\n$(CURDIR)/gen\n')"
	@touch $@

# Stubs and Envoy's descriptor set, generated from protos/ (git-ignored, never edited).
$(GENERATED): $(INSTALLED) $(PROTOS) tools/codegen.py
	$(PY) tools/codegen.py

gen: $(GENERATED)

# buf (npm @bufbuild/buf ships the binary) lints the contracts and checks breaking changes against main.
$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0

lint-protos: setup
	$(BUF) lint
	$(BUF) breaking --against '.git#branch=main'

# Trains and registers the models only when the registry has no `production` version yet.
model: setup
	$(PY) -m training --if-missing

secrets: setup
	$(PY) tools/init_secrets.py

run: setup model secrets
	$(PY) -m tools.run_suite

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Property-based fuzzing of every unary RPC on real servers: 800 generated requests per RPC (a tenth for the four
# slow ones; >= 10,000 in all), and of every REST binding through a real Envoy (400 each). `make test` runs the
# same tests with 20 (REST: 10) each.
fuzz: setup
	FUZZ_EXAMPLES=800 $(PY) -m pytest tests/fuzz tests/e2e/test_rest_fuzz.py $(PYTEST_ARGS)

# Unit and contract tests only (no Envoy, no training): a quick loop while editing.
test-fast: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf gen .tools .pytest_cache
