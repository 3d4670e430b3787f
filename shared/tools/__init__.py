"""Local tools the builtin brains use (search index, analysers)."""
