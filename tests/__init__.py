"""Template tests: bake the template and exercise the generated study for real."""
