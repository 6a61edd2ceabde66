"""Inference benchmarking: the on-device runner, deployment, manifest, result parsing."""
