# The two commands: `make run` (the whole farm in the foreground) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch (on this machine's disk); never let a resolver pick a CUDA build.
TORCH  := torch==2.13.0

.PHONY: run test test-long lint services install install-dev install-cosyvoice bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[worker,cpu]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[worker,cpu,dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The CosyVoice engine's inference dependencies (the `cosyvoice` extra), never part of `make
# test`. openai-whisper goes in with --no-deps (its requirements pull triton). PyPI's
# torchaudio 2.11.1 is a CUDA build: beside a CPU torch its _torchaudio.so fails to import
# (libc10_cuda.so) and no code can catch that, so it is deleted here; the kaldi.fbank and
# Resample CosyVoice uses are pure PyTorch. The official code itself: infra/dev/cosyvoice-src.sh.
install-cosyvoice: $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[worker,cpu,dev,cosyvoice]"
	$(BIN)/python -m pip install -q --no-deps openai-whisper==20250625
	$(BIN)/python -c "import torch; assert torch.version.cuda is None" 2>/dev/null \
	  && rm -f $(VENV)/lib/python*/site-packages/torchaudio/lib/_torchaudio.so || true
	$(BIN)/python -c "import torchaudio.compliance.kaldi, whisper, hyperpyyaml, wetext"

services:
	./infra/dev/ensure-services.sh

# API on 127.0.0.1:8000 (VOICEFARM_API_WORKERS uvicorn processes, 2 unless set), worker
# supervisor (Piper on CPU), beat, Flower on :5555.
# Webhooks to loopback are allowed here, for local receivers; production refuses them.
run: $(VENV)/.installed
	VOICEFARM_WEBHOOK_ALLOW_PRIVATE=$${VOICEFARM_WEBHOOK_ALLOW_PRIVATE:-true} \
	VOICEFARM_AUTH_ENABLED=$${VOICEFARM_AUTH_ENABLED:-false} \
	  exec $(BIN)/voicefarm farm

test: $(VENV)/.installed-dev services
	$(BIN)/python -m pytest

# The long runs: a 10,000-item batch end to end.
test-long: $(VENV)/.installed-dev services
	VOICEFARM_TEST_BATCH_ITEMS=10000 $(BIN)/python -m pytest tests/integration/test_batch_10k.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

bench: $(VENV)/.installed-dev services
	$(BIN)/python bench/synth_rtf.py
	$(BIN)/python bench/farm_throughput.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
