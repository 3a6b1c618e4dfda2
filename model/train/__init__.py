"""Training: the loop, the frozen-trunk cache, pairs, hard negatives, validation, distributed."""
