# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install ui-check mlflow-ui mlflow-server ray-head ray-stop bench gpu-check paper-cpu effective-model signal-propagation clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/adaptsym demo --config configs/demo.yaml --out runs

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -m jobs.benchmark

# one JSON object: vgg12 ratios on CUDA, a short Ray measurement on the GPUs, plan vs measured
gpu-check: $(STAMP)
	$(BIN)/python -m jobs.gpu_check

# the paper's vgg12 at full width on the offline photo-patches, 2 actors (about 30 min on 2 cores)
paper-cpu: $(STAMP)
	$(BIN)/adaptsym plan configs/paper-cpu.yaml --devices cpu:2 --actors 2
	$(BIN)/adaptsym train --config configs/paper-cpu.yaml
	$(BIN)/adaptsym measure --run runs/paper-cpu-vgg12 --ray --actors 2 --num-cpus 2

# Zou & Huang's effective model on the bundled digits: ensembles on 2 Ray actors (14.5 min on 2
# cores), then the Ising fits, entropy landscapes and runs/effective-model-demo/effective_report.html
# (31 min: Gibbs-sampled fits)
effective-model: $(STAMP)
	$(BIN)/python -m jobs.collect_ensemble --config configs/effective-model-demo.yaml --out runs
	$(BIN)/python -m jobs.effective_model --config configs/effective-model-demo.yaml --out runs

# q-map and chi_1 at initialisation against the closed forms (runs/signal-propagation/)
signal-propagation: $(STAMP)
	$(BIN)/python -m jobs.signal_propagation --out runs

# Opens the local MLflow store that `make demo` writes (RUNS/mlflow.db), on 127.0.0.1 only, on the
# runs table (the `adaptsym-runs` app: adaptsym/storage/mlflow_ui.py). One worker process (MLflow's
# default is 4): on 2 idle cores it answers /health in 10 s instead of 14 s.
RUNS ?= runs
MLFLOW_UI_PORT ?= 5000
MLFLOW_UI_WORKERS ?= 1
mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(RUNS))/mlflow.db --host 127.0.0.1 \
	  --port $(MLFLOW_UI_PORT) --workers $(MLFLOW_UI_WORKERS) --app-name adaptsym-runs

# MLflow's UI on the demo's store in headless Chromium: it opens on the runs table (screenshots in
# docs/, the DOM asserted, plain `mlflow ui` as the control that must fail), and the demo's report.
ui-check: $(STAMP)
	$(BIN)/python -m jobs.ui_check --runs $(RUNS) --out docs --control --report $(RUNS)/demo-cnn/report/report.html

# A local MLflow tracking server (sqlite + artifacts in runs/mlflow-server), on 127.0.0.1:5000.
mlflow-server: $(STAMP)
	MLFLOW_BIN=$(BIN)/mlflow MLFLOW_APP_NAME=adaptsym-runs bash infra/mlflow/server.sh

# A local Ray head with token auth on 127.0.0.1 (Jobs API on :8265); jobs run with this venv's python.
# A token is generated on first use (~/.ray/auth_token, user-only); see docs/distributed.md for clients.
ray-head: $(STAMP)
	@RAY_AUTH_MODE=token $(BIN)/ray get-auth-token --generate >/dev/null
	@chmod 600 $${RAY_AUTH_TOKEN_PATH:-$$HOME/.ray/auth_token} 2>/dev/null || true
	@echo "Ray token: $${RAY_AUTH_TOKEN_PATH:-$$HOME/.ray/auth_token} (readable by you only). Clients on this machine"
	@echo "  read it there with RAY_AUTH_MODE=token; on another machine copy it and set RAY_AUTH_TOKEN_PATH to the copy."
	PATH=$(abspath $(BIN)):$$PATH RAY_AUTH_MODE=token $(BIN)/ray start --head --node-ip-address 127.0.0.1 \
	  --port 6379 --dashboard-host 127.0.0.1 --dashboard-port 8265 --disable-usage-stats $(RAY_FIXED_PORTS)

# Every port pinned, so that one firewall rule covers what Ray 2.60 cannot bind to 127.0.0.1
# (docs/distributed.md); the autoscaler and dashboard metrics keep their fixed defaults 44217, 44227.
RAY_FIXED_PORTS := --node-manager-port 6380 --object-manager-port 6381 --metrics-export-port 6382 \
  --dashboard-agent-grpc-port 6383 --dashboard-agent-listen-port 6384 --runtime-env-agent-port 6385 \
  --ray-client-server-port 6386 --min-worker-port 6400 --max-worker-port 6499

# Stops every Ray process of this user; prints Ray's summary, not each process's command line.
ray-stop:
	@out=$$(RAY_AUTH_MODE=token $(BIN)/ray stop 2>&1); rc=$$?; \
	  printf '%s\n' "$$out" | grep -v "Send termination request" | tail -n 2; exit $$rc

clean:
	rm -rf runs .pytest_cache
