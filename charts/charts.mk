# charts/charts.mk -- chart and install-manifest targets; `-include`d by the top-level Makefile.
DISAGG_CHARTS_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
DISAGG_CHART := $(DISAGG_CHARTS_DIR)/disagg-operator

.PHONY: chart-crds manifests helm-lint

chart-crds: ## copy crds/ (and the prometheus-adapter rules) into the chart
	bash $(DISAGG_CHARTS_DIR)/sync-chart-files.sh

manifests: chart-crds ## render manifests/install.yaml from the chart (kubectl install path)
	bash $(DISAGG_E2E_DIR)/tools.sh helm >/dev/null
	bash $(DISAGG_CHARTS_DIR)/render-install.sh

helm-lint: chart-crds ## helm lint the chart (default values, HA, namespaced, monitors)
	bash $(DISAGG_E2E_DIR)/tools.sh helm >/dev/null
	helm=$$(bash $(DISAGG_E2E_DIR)/tools.sh --print-bin-dir)/helm; \
	$$helm lint --strict $(DISAGG_CHART) && \
	$$helm lint --strict $(DISAGG_CHART) --set replicas=2 --set 'watchNamespaces={team-a,team-b}' \
	  --set metrics.podMonitor.enabled=true --set metrics.serviceMonitor.enabled=true \
	  --set prometheusAdapterRules.enabled=true
