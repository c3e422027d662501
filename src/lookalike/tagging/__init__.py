"""Image → attributes: predict every field of a product from its photo (tagger.py), read the colours from
the pixels (colour.py), measure calibration (calibration.py), and audit a catalogue's labels (audit.py).

The main job trains a tagger and saves it inside the checkpoint (`build.attach`), so `lookalike tag`,
`lookalike audit`, `serve` and `/api/tag` need no extra step.
"""
