# Everything runs from the project's own virtualenv, created on first use: a fresh clone needs
# only python3 (3.11+) and make.
PYTHON_BOOTSTRAP ?= python3
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO := proto/billing/v1/billing.proto

.PHONY: install proto run test lint check-prometheus bench clean distclean

install: $(STAMP)

# Re-installs only when the dependency declarations change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Regenerates the committed stubs in billing/v1 (grpcio-tools is pinned: output is byte-identical).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)

run: $(STAMP)
	$(VENV)/bin/billing serve

test: $(STAMP)
	$(PY) -m pytest --cov=billing.domain --cov=billing.use_cases \
		--cov-report=term-missing:skip-covered --cov-fail-under=95

# Runs every checker, then fails if any failed.
lint: $(STAMP)
	@status=0; \
	echo "ruff check ."; $(VENV)/bin/ruff check . || status=1; \
	echo "mypy billing"; $(VENV)/bin/mypy billing || status=1; \
	echo "lint-imports"; $(VENV)/bin/lint-imports || status=1; \
	exit $$status

# The alert rules and a real scrape of /metrics through promtool (Debian's `prometheus` package).
check-prometheus: $(STAMP)
	$(PY) deploy/prometheus/check_metrics.py

# Benchmarks against same-run local limits and the peer (issues 7, 10, 11; bench/__main__.py says
# what each section prints); never part of `make test`. Needs the local Postgres (127.0.0.1:5432,
# user postgres), pgbench, wrk (installed here when missing) and ../shared/peer_flask (its
# setup.sh makes its virtualenv on first use). `python -m bench SECTION` runs one section.
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || apt-get install -y -q wrk >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }
	@command -v pgbench >/dev/null 2>&1 || test -x /usr/bin/pgbench \
		|| { echo "bench: pgbench is missing (apt-get install postgresql-client)"; exit 1; }
	$(PY) -m bench

clean:
	rm -rf build dist *.egg-info .coverage .coverage.* htmlcov \
		.pytest_cache .mypy_cache .ruff_cache .import_linter_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
