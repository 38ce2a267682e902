# `make demo`: set up, build the demo corpus, train DTDY x0.25 and its static twin on it and evaluate both
# (about 15 minutes on 2 CPU cores), then compare them: each EER with its interval and the paired verdict.
# `make recipe-demo`: every stage of the modern recipe at the demo's size (about 11 minutes on 2 CPU cores) and a
# table of its raw, AS-normalised and calibrated figures.
# `make test`: set up if needed, lint and run the test suite; `make test-fast`: the unit tests only (no training run).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR := demo_data
DEMO_CORPUS := --demo_train_speakers 100 --demo_utts 8 --demo_test_speakers 20 --demo_test_utts 6 \
	--demo_videos 2 --demo_trials 600 --demo_calibration_speakers 20

.PHONY: venv demo recipe-demo test test-fast lint bench clean-demo

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) dataprep.py --make_demo $(DEMO_DIR) $(DEMO_CORPUS)
	$(PY) trainSpeakerNet.py --config configs/demo.yaml
	$(PY) trainSpeakerNet.py --config configs/demo_static.yaml
	@echo "A: static ResNet-34 x0.25, B: DTDY x0.25, on the same 600 held-out trials:"
	@$(PY) compareSystems.py exps/demo_static exps/demo --list test_list --det exps/demo_det.png

recipe-demo: venv
	$(PY) dataprep.py --make_demo $(DEMO_DIR) $(DEMO_CORPUS)
	$(PY) trainSpeakerNet.py --config configs/demo_recipe.yaml
	$(PY) averageCheckpoints.py --save_path exps/demo_recipe --last 4
	$(PY) trainSpeakerNet.py --config configs/demo_recipe_lm.yaml
	$(PY) averageCheckpoints.py --save_path exps/demo_recipe_lm --last 2
	$(PY) trainSpeakerNet.py --config configs/demo_recipe_lm.yaml --eval --save_path exps/demo_recipe_final \
		--initial_model exps/demo_recipe_lm/model/average_last2.model
	@$(PY) compareSystems.py --summary --variants exps/demo_recipe_final

lint: venv
	$(PY) -m ruff check .

test: venv lint
	$(PY) -m pytest -q

test-fast: venv lint
	$(PY) -m pytest -q -m "not slow"

clean-demo:
	rm -rf $(DEMO_DIR) exps/demo exps/demo_static exps/demo_recipe exps/demo_recipe_lm exps/demo_recipe_final
