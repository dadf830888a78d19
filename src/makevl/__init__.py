"""makevl: text-to-multimodal product retrieval (MAKE) that trains, measures, indexes and serves."""

__version__ = "0.1.0"
