"""The fast int8 runtime: Florence-2 re-implemented for batch-1 greedy decoding with torch alone."""
