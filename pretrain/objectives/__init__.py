"""Self-supervised objectives: `forward(batch, backbone) -> (loss, logs)`."""
