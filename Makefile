# make demo : set up .venv (runtime + ROS 2 wheels) and run the node on the shipped model and sample bag
# make test : set up .venv (everything, torch CPU included) and run the whole test suite, then its ROS part again
#             on Jazzy wheels and on Kilted with vision_msgs + tf2_msgs (make test-distros; cached venvs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test test-distros clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.ros: $(BIN)/python setup.py
	$(PIP) install --quiet -e '.[ros]'
	touch $@

$(VENV)/.test: $(VENV)/.ros setup.py
	$(PIP) install --quiet -e '.[ros,test]'
	touch $@

demo: $(VENV)/.ros
	$(BIN)/seg-perception demo --out out/demo
	@echo "outputs: out/demo/summary.md, out/demo/frames/*.png"

test: $(VENV)/.test
	$(BIN)/ruff check seg_perception test launch setup.py
	$(BIN)/python -m pytest -q test
	.ci/ros_distros.sh $(VENV)

test-distros: $(VENV)/.test
	.ci/ros_distros.sh $(VENV)

clean:
	rm -rf $(VENV) out build *.egg-info
