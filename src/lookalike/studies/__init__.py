"""Studies: comparisons, sweeps and the item-bank and classifier A/B studies.

They import the library and are never imported by it; their commands plug into the CLI through the
`lookalike.commands` entry points.
"""
