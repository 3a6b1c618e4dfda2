"""Answering searches without FastAPI: the engine, version loading, batcher, cache, logs, metrics, workers."""
