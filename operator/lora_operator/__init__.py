"""lora-operator: the Kubernetes operator for LoRA training jobs."""
