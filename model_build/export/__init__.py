"""From trained weights to the served artifact: merge, quantize, prepare, gate and write."""
