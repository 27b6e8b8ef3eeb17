"""gaugeflow.fermions (under construction)."""
