"""`python -m lookalike.cli`: the `lookalike` command."""

from lookalike.cli import main

main()
