# make demo : set up .venv (runtime + ROS 2 wheels) and replay the sample bag through the node (replay --live)
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
	$(PIP) install --quiet -e '.[ros,replay]'
	touch $@

$(VENV)/.test: $(VENV)/.ros setup.py
	$(PIP) install --quiet -e '.[ros,test]'
	touch $@

demo: $(VENV)/.ros
	$(BIN)/seg-perception demo --out out/demo
	@echo "report: out/demo/report.md (numbers, plots, strip.png; every frame in out/demo/overlay.mp4)"

test: $(VENV)/.test
	$(BIN)/ruff check seg_perception test launch setup.py
	$(BIN)/python -m pytest -q test
	.ci/ros_distros.sh $(VENV)

test-distros: $(VENV)/.test
	.ci/ros_distros.sh $(VENV)

clean:
	rm -rf $(VENV) out build *.egg-info
