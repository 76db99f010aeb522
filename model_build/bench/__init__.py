"""The full-size speed benchmark: served runtime against the seed recipe, and its report."""
