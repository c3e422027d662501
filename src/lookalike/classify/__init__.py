"""Binary image classifiers: labelled image sets, model adapters, A/B statistics and reports."""

from importlib.metadata import PackageNotFoundError, version

PACKAGES = ["opencv-python-headless", "fer", "h5py", "scikit-learn", "statsmodels", "onnxruntime", "torch"]


def versions() -> dict[str, str | None]:
    """Versions of what produces and judges the scores, recorded next to every result."""
    out: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out
