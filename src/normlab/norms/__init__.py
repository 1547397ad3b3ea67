"""normlab.norms."""
