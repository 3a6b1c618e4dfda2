"""The offline build: pipeline, stages, incremental update, evaluation, publish gate, experiments."""
