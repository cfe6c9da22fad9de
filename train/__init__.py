"""Training: DeepSpeed pretraining, fine-tuning, CLOUD-DEBYE, scaling laws, the `cloud` CLI."""
