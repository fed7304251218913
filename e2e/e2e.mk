# e2e/e2e.mk -- e2e tool chain and local cluster targets; `include`d by the top-level Makefile.
# Everything is delegated to the scripts next to this file (see e2e/README.md).
DISAGG_E2E_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

.PHONY: e2e-tools cluster-up cluster-down cluster-status

e2e-tools: ## Build/cache the e2e binaries (kube-*, etcd, kwok, helm, llm-d router, prometheus-adapter, llm-d-inference-sim), Prometheus, KEDA/GAIE/Gateway API CRDs
	bash $(DISAGG_E2E_DIR)/tools.sh
	bash $(DISAGG_E2E_DIR)/ensure-prometheus.sh
	bash $(DISAGG_E2E_DIR)/tools.sh --keda-crd >/dev/null
	bash $(DISAGG_E2E_DIR)/tools.sh --gaie-crds >/dev/null
	bash $(DISAGG_E2E_DIR)/tools.sh --gateway-crds >/dev/null

cluster-up: ## Start the local kwok cluster with fake GPU nodes (prints the kubeconfig path)
	bash $(DISAGG_E2E_DIR)/cluster.sh up

cluster-down: ## Stop and delete the local kwok cluster
	bash $(DISAGG_E2E_DIR)/cluster.sh down

cluster-status: ## Show whether the local kwok cluster is up
	bash $(DISAGG_E2E_DIR)/cluster.sh status

