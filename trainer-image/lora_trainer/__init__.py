"""lora-trainer: diffusers + peft LoRA / LoCon / embedding training."""
