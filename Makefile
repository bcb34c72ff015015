# One command per job. Every target that needs Python depends on `setup`, so a fresh clone works.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Multi-process CPU runs talk over the loopback interface only.
LOOPBACK := GLOO_SOCKET_IFNAME=lo MASTER_ADDR=127.0.0.1

.PHONY: help setup demo test test-fast mnist cifar week01 week02 week03 week04 week05 week06 week11 clean

help:
	@echo "make setup      create .venv and install the pinned requirements (re-runs when they change)"
	@echo "make demo       train the CNN on the embedded MNIST (about 30 s on a 2-core CPU)"
	@echo "make test       run the whole test suite; make test-fast skips multi-process and slow tests"
	@echo "make mnist      train softmax regression, the MLP and the CNN, one run each"
	@echo "make week01     learning-rate sweep, writes results/week01/"
	@echo "make week02     1 vs 2 process DDP throughput and memory, writes results/week02/"
	@echo "make cifar      train the CIFAR-10 MLP, CNN and ResNet on the embedded sample, one run each"
	@echo "make week03     CIFAR-10 models x augmentation at a 60 s budget each, writes results/week03/"
	@echo "make week04     character-level GPT: nanoGPT's CPU config x3, the tuned config, attention bench, writes results/week04/"
	@echo "make week05     BPE tokenizer, token shards, GPT training, perplexity and bits per byte, writes results/week05/"
	@echo "make week06     same-budget ablation over seeds, 1 vs 2 processes, writes results/week06/"
	@echo "make week11     KV cache, ours vs transformers, tiled-attention memory, speculative decoding, writes results/week11/"
	@echo "make clean      remove .venv and caches (results/ is kept)"

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: setup
	$(PY) mnist/train.py --config mnist/configs/cnn.yaml --run.name=demo

test: setup
	$(LOOPBACK) $(PY) -m pytest -q

test-fast: setup
	$(LOOPBACK) $(PY) -m pytest -q -m "not multiprocess and not slow"

mnist: setup
	$(PY) mnist/train.py --config mnist/configs/baseline.yaml
	$(PY) mnist/train.py --config mnist/configs/mlp.yaml
	$(PY) mnist/train.py --config mnist/configs/cnn.yaml

week01: setup
	$(PY) mnist/week01.py --out results/week01

week02: setup
	$(LOOPBACK) $(PY) mnist/week02.py --out results/week02

cifar: setup
	$(PY) cifar/train.py --config cifar/configs/mlp.yaml
	$(PY) cifar/train.py --config cifar/configs/cnn.yaml
	$(PY) cifar/train.py --config cifar/configs/resnet.yaml

week03: setup
	$(PY) cifar/week03.py --out results/week03

week04: setup
	$(PY) charlm/week04.py --out results/week04

week05: setup
	$(PY) lm/week05.py --out results/week05

week06: setup
	$(LOOPBACK) $(PY) cifar/week06.py --out results/week06

week11: setup
	$(PY) infer/week11.py --out results/week11

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
