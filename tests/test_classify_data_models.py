"""Labelled image loading (bad files skipped and counted) and the Haar / fer / ONNX adapters on real faces."""

import shutil

import numpy as np
import pytest
import torch
from conftest import SHARED

from lookalike.classify.data import load_labelled, stratified_split
from lookalike.classify.models import FerHappy, HaarSmile, OnnxClassifier, load_classifier
from lookalike.errors import LookalikeError

SMILES = SHARED / "smiles"
pytestmark = pytest.mark.usefixtures("one_thread")  # a few dozen small images


@pytest.fixture(scope="session")
def faces():
    """60 smiling and 60 non-smiling real faces, decoded once."""
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for sub, label in (("positives", 1), ("negatives", 0)):
        files = sorted((SMILES / sub).glob("*.jpg"))
        paths += [files[i] for i in rng.choice(len(files), 60, replace=False)]
        labels += [label] * 60
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in paths], np.array(labels)


def test_folder_loading_skips_and_counts_bad_files(tmp_path):
    pos, neg = SMILES / "positives", SMILES / "negatives"
    for d in ("positives", "negatives"):
        (tmp_path / d).mkdir()
    for name in ("100.jpg", "1000.jpg", "10007.jpg"):
        shutil.copy(pos / name, tmp_path / "positives" / name)
    for name in sorted(p.name for p in neg.glob("*.jpg"))[:4]:
        shutil.copy(neg / name, tmp_path / "negatives" / name)
    shutil.copy(pos / "100.jpg", tmp_path / "negatives" / "conflict.jpg")  # same file, other label
    (tmp_path / "negatives" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "negatives" / "notes.txt").write_text("hello")
    d = load_labelled(tmp_path)
    assert len(d) == 6 and d.labels.sum() == 2  # 100.jpg dropped from both sides
    assert d.report.skipped == {
        "same image labelled both positive and negative": 2,
        "corrupt image": 1,
        "not an image file name": 1,
    }
    assert d.images[0].shape == (64, 64, 3) and d.images[0].dtype == np.uint8


def test_csv_loading_and_its_errors(tmp_path):
    p = sorted((SMILES / "positives").glob("*.jpg"))[:2]
    n = sorted((SMILES / "negatives").glob("*.jpg"))[:2]
    csv = tmp_path / "labels.csv"
    csv.write_text(f"path,label\n{p[0]},1\n{p[1]},smiling\n{n[0]},0\n{n[1]},maybe\n{tmp_path / 'gone.jpg'},0\n")
    d = load_labelled(csv)
    assert d.labels.tolist() == [1, 1, 0]
    assert d.report.skipped["missing file"] == 1 and sum(d.report.skipped.values()) == 2
    (tmp_path / "bad.csv").write_text("file,y\na,1\n")
    with pytest.raises(LookalikeError, match="path,label"):
        load_labelled(tmp_path / "bad.csv")
    with pytest.raises(LookalikeError, match="positives/ and negatives/"):
        load_labelled(tmp_path)


def test_stratified_split_is_disjoint_and_keeps_the_ratio():
    y = np.r_[np.ones(300), np.zeros(700)].astype(int)
    tr, va, te = stratified_split(y, (0.7, 0.15, 0.15), seed=1)
    assert len(set(tr) | set(va) | set(te)) == 1000 and len(tr) + len(va) + len(te) == 1000
    assert y[va].mean() == pytest.approx(0.3, abs=0.01) and y[te].mean() == pytest.approx(0.3, abs=0.01)
    assert (stratified_split(y, (0.7, 0.15, 0.15), seed=1)[1] == va).all()


def test_fer_port_matches_the_shipped_tflite_and_separates_smiles(faces):
    from ai_edge_litert.interpreter import Interpreter
    from sklearn.metrics import roc_auc_score  # ~1.5 s to import: only on the worker that runs it

    from lookalike.classify.fer_net import HAPPY, fer_data_dir, load_fer_model, preprocess_faces

    images, y = faces
    grey = np.stack([im[..., 0] for im in images[:30]])  # the crops are grey: R = G = B
    with torch.inference_mode():
        ours = load_fer_model()(preprocess_faces(grey)).numpy()
    tfl = Interpreter(model_path=str(fer_data_dir() / "emotion_model_quantized.tflite"))
    tfl.allocate_tensors()
    ref = []
    for x in preprocess_faces(grey).permute(0, 2, 3, 1).numpy():
        tfl.set_tensor(tfl.get_input_details()[0]["index"], x[None])
        tfl.invoke()
        ref.append(tfl.get_tensor(tfl.get_output_details()[0]["index"])[0])
    assert np.abs(ours - np.array(ref)).max() < 0.06  # int8 quantisation of the reference
    assert (ours.argmax(1) == np.array(ref).argmax(1)).mean() >= 0.9
    p = FerHappy().predict(images)  # the ONNX Runtime path agrees with the port
    np.testing.assert_allclose(p[:30], ours[:, HAPPY], atol=1e-5)
    assert roc_auc_score(y, p) > 0.85


def test_haar_cascades_score_smiles(faces):
    from sklearn.metrics import roc_auc_score  # ~1.5 s to import: only on the worker that runs it

    images, y = faces
    h = load_classifier("haar")
    assert isinstance(h, HaarSmile) and h.files["smile"].name == "haarcascade_smile.xml"
    s = h.predict(images)
    assert ((s >= 0) & (s < 1)).all() and roc_auc_score(y, s) > 0.75


class _Brightness(torch.nn.Module):
    """NCHW float in [0, 1] → two logits, favouring class 1 for bright images."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3)) * 10 - 5
        return torch.stack([-m, m], dim=1)


def test_onnx_adapter_reads_layout_and_output_from_the_graph(tmp_path, faces):
    from lookalike.classify.onnx_export import export_onnx

    path = export_onnx(_Brightness(), torch.zeros(2, 3, 32, 32), tmp_path / "bright.onnx", "x", "logits", {0: "batch"})
    clf = load_classifier(f"bright={path}")
    assert isinstance(clf, OnnxClassifier) and clf.name == "bright"
    assert clf.layout == "NCHW" and clf.size == [32, 32] and not clf.uint8
    images = faces[0][:8]
    p = clf.predict(images)
    import cv2

    x = np.stack([cv2.resize(im, (32, 32), interpolation=cv2.INTER_AREA) for im in images]).astype(np.float32) / 255
    expected = torch.softmax(_Brightness()(torch.from_numpy(x.transpose(0, 3, 1, 2))), 1)[:, 1].numpy()
    np.testing.assert_allclose(p, expected, atol=1e-5)
    with pytest.raises(LookalikeError, match="unknown model"):
        load_classifier("resnet")
