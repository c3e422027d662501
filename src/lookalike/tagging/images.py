"""A loaded model's tagger at work: photos → attributes (what `lookalike tag` and `/api/tag` call)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.tagging.colour import colour_vector
from lookalike.tagging.tagger import Labelled, Tagger


class ImageTagger:
    """A loaded model's tagger: photos (files, bytes or PIL images) → attributes with confidences."""

    def __init__(self, encoder, tagger: Tagger):
        self.enc, self.tagger = encoder, tagger

    @classmethod
    def of(cls, encoder) -> ImageTagger:
        state = encoder.payload.get("tagger")
        if state is None:
            raise LookalikeError(
                "this checkpoint has no tagger (it was trained before tagging existed): "
                "retrain it with `lookalike train`"
            )
        return cls(encoder, Tagger.from_state(state))

    def tag(
        self,
        images: list[Image.Image],
        exclude_ids: list[str | None] | None = None,
        vectors: np.ndarray | None = None,
    ) -> list[dict]:
        """The tags of each image (see `Tagger.tags`). `exclude_ids`: a gallery product each image must not
        vote for (the image of a catalogue product is not its own evidence); `vectors`: the images' vectors
        in the served space when already known (a stored product's)."""
        if not images:
            return []
        data = Labelled(
            self.enc.images(images) if vectors is None else vectors,
            np.stack([colour_vector(im) for im in images]),
            [{} for _ in images],
            ["" for _ in images],
        )
        probs = self.tagger.predict(data, exclude_ids)
        return [self.tagger.tags(probs, i) for i in range(len(images))]
