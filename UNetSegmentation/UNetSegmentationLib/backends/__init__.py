"""Running the network: the one place that decides device, precision, backend and threads; PyTorch, ONNX Runtime and int8 predictors."""
