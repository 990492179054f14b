# Prometheus alerting rules and the Grafana dashboard for Flux (deploy/monitoring/), checked with promtool.
# Included by the top Makefile, like clients/go/go.mk. promtool comes from the Debian package `prometheus`,
# unpacked into deploy/monitoring/build/ rather than installed: installing it would also install and start a
# Prometheus server, and promtool alone needs neither root nor a service.

MONITORING_DIR   := deploy/monitoring
MONITORING_RULES := $(MONITORING_DIR)/flux-rules.yaml
MONITORING_TESTS := $(MONITORING_DIR)/flux-rules.test.yaml
PROMTOOL         := $(MONITORING_DIR)/build/usr/bin/promtool

.PHONY: monitoring monitoring-check

monitoring: $(PROMTOOL) ## unpack promtool from Debian's prometheus package into deploy/monitoring/build

$(PROMTOOL):
	rm -rf $(MONITORING_DIR)/build && mkdir -p $(MONITORING_DIR)/build/deb
	cd $(MONITORING_DIR)/build/deb && { apt-get download prometheus 2>/dev/null || \
		{ apt-get update -qq && apt-get download prometheus; }; }
	dpkg-deb -x $(MONITORING_DIR)/build/deb/prometheus_*.deb $(MONITORING_DIR)/build
	rm -rf $(MONITORING_DIR)/build/deb
	$(PROMTOOL) --version | head -1

# Debian's Prometheus is built without Kubernetes service discovery, so its promtool cannot check
# prometheus.yaml (kubernetes_sd_configs); tests/test_monitoring.py checks that file's labels instead.
monitoring-check: $(PROMTOOL) ## promtool: check the alerting rules and run their unit tests
	$(abspath $(PROMTOOL)) check rules $(MONITORING_RULES)
	cd $(MONITORING_DIR) && $(abspath $(PROMTOOL)) test rules $(notdir $(MONITORING_TESTS))
