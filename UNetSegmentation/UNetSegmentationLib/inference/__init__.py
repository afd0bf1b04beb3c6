"""Volume in, labels out: slicing, normalisation, the streaming pipeline, post-processing."""
