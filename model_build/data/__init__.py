"""Training and evaluation data: COCO-format samples and the deterministic synthetic set."""
