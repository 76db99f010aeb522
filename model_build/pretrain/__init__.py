"""Pretraining the embedded tiny Florence-2 on synthetic scenes."""
