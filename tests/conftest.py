"""Every test process sends no telemetry (modelkiln/telemetry.py): loaded before any test module
imports openvino or nncf, whose model conversion would otherwise fork a sender inside pytest."""

from modelkiln import telemetry

telemetry.off()
