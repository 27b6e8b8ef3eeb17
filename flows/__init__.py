"""gaugeflow.flows (under construction)."""
