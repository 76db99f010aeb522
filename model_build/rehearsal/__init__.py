"""The full-size rehearsal: the whole build and serving path once, at Florence-2-base size, offline.

No hub is reachable here, so the base is written locally in `florence-community/Florence-2-base`'s
layout with random weights (`random_base`): its real config, a 51,290-entry BART-style tokenizer and
the processor. `pipeline` then runs synth -> finetune -> fuse -> handler `/analyze` on it, each stage in
its own process, and reports wall time, peak memory and the artifact's size. It catches the shape,
tokenizer and memory bugs the embedded tiny model hides; random weights say nothing about quality.
"""
