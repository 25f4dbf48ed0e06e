# Two entry points (README): `make demo` runs a demo study, `make test` runs the test suite.
# Both create .venv and install the package on first use (about 4 minutes on a fresh machine).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
# Ray turns token auth on at the first ray.init(); a local or test cluster does not want it (DESIGN §8).
export RAY_AUTH_MODE ?= disabled

.PHONY: demo test install

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test,cluster]'
	touch $(STAMP)

# A study name is used once: each demo is a fresh study, smoke-<date>-<time> (`make demo DEMO_NAME=...` to choose).
DEMO_NAME ?= smoke-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(VENV)/bin/aaclip-study run search_spaces/smoke.yaml --name $(DEMO_NAME)

test: $(STAMP)
	$(VENV)/bin/pytest -q
