"""The coordinator: the ServerApp, aggregation, checkpoints and the release."""
