"""One module per `gaugeflow` command."""
