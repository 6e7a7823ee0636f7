"""Distributed batch jobs for audio-video emotion recognition (Zhou, Meng et al., ICMI 2019)."""

__version__ = "0.1.0"
