# Two entry points (README.md): `make demo` and `make test`. Both use the venv in .venv/.
# `make check` is the quick one before a commit: lint and the fast tests, no QEMU, no root (it uses the
# tools and caches make test installed once).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check lint bench clean deb

$(STAMP): pyproject.toml scripts/venv.sh
	bash scripts/venv.sh $(VENV)
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/bootkeeper demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench fuzz
	$(VENV)/bin/ruff format --check src tests bench fuzz
	$(VENV)/bin/mypy

test: $(STAMP)
	bash scripts/setup-test-deps.sh
	$(MAKE) --no-print-directory lint
	bash scripts/test.sh
	$(PY) bench/startup.py

# lint and the tests that boot no VM (markers node, guest, vm) and need no root (marker root: mounts,
# namespaces, chroot into the trixie tree); about 10 minutes on two cores
check: $(STAMP)
	$(MAKE) --no-print-directory lint
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not node and not guest and not vm and not root"

bench: $(STAMP)
	$(PY) bench/startup.py
	$(PY) bench/verity.py
	$(PY) bench/activate.py
	$(PY) bench/update.py

# bootkeeper's Debian package (docs/packaging.md), built in the trixie tree: build/deb/bootkeeper_*_all.deb
deb:
	bash scripts/setup-trixie.sh
	bash scripts/build-deb.sh build/deb

clean:
	rm -rf $(VENV) .cache build src/*.egg-info

include fuzz.mk  # make fuzz: atheris targets, bounded in time; not part of make test
