"""The bundled sample catalog and its photos (data for the demo and tests, not a model)."""
