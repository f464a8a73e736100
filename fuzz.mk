# `make fuzz`: every fuzzing target in fuzz/targets.py for FUZZ_TIME seconds each, one after the
# other on one core (fuzz/run.py; FUZZ_TARGETS="pkcs7 gpt" picks some). Installs atheris into the
# venv first if it is missing. Not part of `make test`; what it keeps is: each crashing input goes
# to tests/data/fuzz/<target>/, which tests/project/test_fuzz_regressions.py runs. Include this file after
# VENV and STAMP are defined.
VENV ?= .venv
FUZZ_TIME ?= 60
FUZZ_TARGETS ?=

.PHONY: fuzz

fuzz: $(STAMP)
	@$(VENV)/bin/python -c "import atheris" 2>/dev/null || $(VENV)/bin/pip install atheris
	$(VENV)/bin/python fuzz/run.py --time $(FUZZ_TIME) $(FUZZ_TARGETS)
