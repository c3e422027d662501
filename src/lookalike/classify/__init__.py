"""Binary image classifiers: labelled image sets, model adapters, A/B statistics and reports."""

PACKAGES = ["opencv-python-headless", "fer", "h5py", "scikit-learn", "statsmodels", "onnxruntime", "torch"]


def versions() -> dict[str, str | None]:
    """Versions of what produces and judges the scores, recorded next to every result."""
    from importlib.metadata import distributions

    installed = {(d.metadata["Name"] or "").lower(): d.version for d in distributions()}
    return {p: installed.get(p) for p in PACKAGES}
