"""Models: specs to modules (specs), capturing layer outputs (capture) as unit maps (layouts),
exported and TorchScript programs."""
