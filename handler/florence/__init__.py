"""The Florence-2 core: tasks and box codec, preprocessing, the artifact and the inference engine."""
