"""Head-to-head studies of alternative components on the same data and evaluation."""
