"""The base checkpoint: Florence-2 from a local folder or the hub, or the embedded tiny one."""
