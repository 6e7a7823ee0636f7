"""Pipeline stages: per-clip preprocessing (CPU), and the Ray jobs built on it."""
