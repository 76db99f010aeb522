"""The HTTP entry point: the FastAPI app, request bodies, response schemas and drawn detections."""
