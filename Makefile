# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo
export YOLO_OFFLINE := 1

.PHONY: setup demo test clean-demo

$(STAMP): requirements.txt requirements-service.txt requirements-dev.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements-dev.txt -e .
	touch $(STAMP)

setup: $(STAMP)

# Generate a 300-frame sample bag and replay it through the whole graph in real time, with the
# cloud service embedded on loopback (params.yaml's URL is the robot's, not this machine's),
# under config/scenarios/failover.yaml: the edge hangs for 6 s (the cloud carries the frames),
# then the cloud drops out for 5 s (the edge does): the summary shows both, detected and
# recovered from.
# The default models are the shipped ones, trained on these scenes (docs/models.md): YOLOv8n on
# the edge, the compact Faster R-CNN in the embedded service. MODEL=yolov8n.yaml runs the
# yolov8n architecture with random weights; MODEL=/path/to/yolov8n.pt your COCO weights.
MODEL ?= models/yolov8n-shapes.pt
demo: $(STAMP)
	rm -rf $(DEMO)/sample $(DEMO)/out
	$(BIN)/adaptive-offload sample-bag $(DEMO)/sample --frames 300 --fps 10
	$(BIN)/adaptive-offload replay $(DEMO)/sample --out $(DEMO)/out --model $(MODEL) \
		--imgsz 320 --params config/params.yaml --cloud embedded \
		--scenario config/scenarios/failover.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

clean-demo:
	rm -rf $(DEMO)
