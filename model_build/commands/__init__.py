"""CLI commands: argument parsing only; the work lives in the modules they call."""
