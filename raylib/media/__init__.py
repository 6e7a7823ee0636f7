"""Media preprocessing (PAPER.md section 1): video frames, audio spectrograms, aligned faces."""
