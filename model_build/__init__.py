"""Build step: fine-tune Florence-2 with LoRA, fuse and quantize it into the artifact `handler` serves."""
