# `make demo`: set up, build the demo corpus, train and evaluate on it (a few minutes on 2 CPU cores).
# `make test`: set up if needed, lint and run the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR := demo_data
DEMO_CORPUS := --demo_train_speakers 100 --demo_utts 8 --demo_test_speakers 20 --demo_test_utts 6 \
	--demo_videos 2 --demo_trials 600

.PHONY: venv demo test lint bench clean-demo

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) dataprep.py --make_demo $(DEMO_DIR) $(DEMO_CORPUS)
	$(PY) trainSpeakerNet.py --config configs/demo.yaml
	$(PY) trainSpeakerNet.py --config configs/demo.yaml --eval

lint: venv
	$(PY) -m ruff check .

test: venv lint
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO_DIR) exps/demo
