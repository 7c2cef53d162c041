# peftlab — `make help` lists the targets.
PY ?= .venv/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export WANDB_MODE ?= offline

# test processes (pytest-xdist): 2 = the CI machine's cores; TEST_WORKERS=0 runs in this process (a debugger, -x)
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal
# pytest's status, except that "no tests collected" (5) fails
NONE_FAILS = rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

.PHONY: help install demo test test-slow test-all lint bench mini clean

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# pip through the venv's own python (a copied venv's bin/pip may start another venv's interpreter); an existing
# venv is not re-created (that rewrites its pyvenv.cfg and activate scripts in place)
.venv/.installed: requirements.txt pyproject.toml
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/python -m pip install -q --upgrade pip
	.venv/bin/python -m pip install -q -r requirements.txt
	.venv/bin/python -m pip install -q --no-deps -e .
	touch $@

install: .venv/.installed ## create .venv with pinned dependencies and the package (editable)

demo: install ## offline demo: MiniLM + LoRA on the synthetic pair task (CPU, a few minutes)
	time $(PY) train.py

test: install ## the quick loop: every test not marked slow; "no tests collected" fails
	@$(PYTEST); $(NONE_FAILS)

test-slow: install ## only the tests marked slow (CI runs them after `make test`)
	@$(PYTEST) -m slow; $(NONE_FAILS)

test-all: install ## every test, slow ones included
	@$(PYTEST) -m ""; $(NONE_FAILS)

lint: install ## ruff
	$(PY) -m ruff check .

bench: install ## method benchmark: memory and step time vs full FT and LoRA, same run
	$(PY) scripts/bench_methods.py

mini: install ## rebuild every mini table and figure from new records of this (clean) commit (scripts/rebuild_mini.py)
	$(PY) scripts/rebuild_mini.py

clean: ## remove run outputs (not results/)
	rm -rf outputs multirun lightning_logs .pytest_cache
