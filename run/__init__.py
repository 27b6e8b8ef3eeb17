"""gaugeflow.run (under construction)."""
