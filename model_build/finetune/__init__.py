"""LoRA fine-tuning and the adapter on disk."""
