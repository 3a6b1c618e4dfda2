"""The serving runtimes of the towers: query encoder, CUDA graphs, ONNX export, photo queries."""
