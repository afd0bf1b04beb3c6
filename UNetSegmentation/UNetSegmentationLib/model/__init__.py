"""What a checkpoint is: metadata, the torch-free header reader, loading and saving weights, depth policy."""
