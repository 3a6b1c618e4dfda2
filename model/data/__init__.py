"""Data contracts: catalog rows, their fields and views, interactions and judgments."""
