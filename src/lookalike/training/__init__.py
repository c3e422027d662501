"""Training lives apart from the library: towers, losses and evaluators do not import it."""
