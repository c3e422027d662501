"""Search over the image space: exact (brute-force) search is the ground truth."""
