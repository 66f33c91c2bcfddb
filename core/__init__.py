"""Bottom layer: helpers that import nothing else of this project (distributed, seeding, files, loading, precision)."""
