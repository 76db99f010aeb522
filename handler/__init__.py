"""Serving: the Lambda handler, HTTP API and S3-upload worker. Runtime dependencies only."""
