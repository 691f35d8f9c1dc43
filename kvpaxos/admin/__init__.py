"""AMP admin commands: status, membership changes and leader transfer for operators."""
