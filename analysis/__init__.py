"""gaugeflow.analysis (under construction)."""
