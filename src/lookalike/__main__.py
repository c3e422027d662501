"""`python -m lookalike`: the `lookalike` command."""

from lookalike.cli import main

main()
