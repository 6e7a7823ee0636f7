"""Media preprocessing (docs/method.md, section 1): video frames, audio spectrograms, aligned faces."""
