"""The non-HTTP Lambda events: S3 uploads and direct invokes."""
