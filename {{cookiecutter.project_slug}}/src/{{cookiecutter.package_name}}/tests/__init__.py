"""The study's own tests (inside the package, so they use relative imports)."""
