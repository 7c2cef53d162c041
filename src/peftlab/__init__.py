"""peftlab: sparse and low-rank parameter-efficient fine-tuning under one protocol."""

__version__ = "0.1.0"
