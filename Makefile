# The two set-up commands of the README: `make demo` and `make test`. Both create .venv when needed.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	./scripts/system-deps

demo: install system-deps
	$(BIN)/microscope demo

lint: install
	$(BIN)/ruff check app worker store tests bench migrations

test: install system-deps lint
	$(BIN)/pytest -q
