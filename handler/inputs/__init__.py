"""Untrusted inputs: image bytes, S3 objects and the JSON image payload."""
