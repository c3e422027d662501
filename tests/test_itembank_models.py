"""Loading code for users' own models, on tiny randomly initialised models saved locally (no hub):
CLIP / SigLIP text side and Qwen3-VL-Embedding as dense item encoders, and a cross-encoder reranker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from lookalike.encoders.hf_text import create_item_text_encoder
from lookalike.errors import LookalikeError
from lookalike.retrieval.rerank.cross_encoder import HFCrossEncoder, create_reranker, rerank

TEXTS = ["사과 3개와 배 2개", "정사각형의 둘레를 구하시오", "몇 개입니까", "사과"]
CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _tokenizer(directory, chat_template=None):
    """A WordPiece tokenizer over the test texts' syllables (Korean words split into known pieces)."""
    chars = sorted(
        {c for t in [*TEXTS, "Represent the user's input.", "system user assistant"] for c in t if not c.isspace()}
    )
    vocab = (
        ["[PAD]", "[SEP]", "[UNK]", "[CLS]", "[MASK]", "<|system|>", "<|user|>", "<|assistant|>"]
        + chars
        + [f"##{c}" for c in chars]
    )
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = transformers.BertTokenizerFast(
        str(directory / "vocab.txt"),
        do_lower_case=False,
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    if chat_template:
        tok.chat_template = chat_template
    tok.save_pretrained(directory)
    return tok, len(vocab)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    out = {}
    d = root / "clip"
    d.mkdir()
    _, n = _tokenizer(d)
    text = {
        "vocab_size": n,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "bos_token_id": 3,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }
    vision = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 37,
    }
    transformers.CLIPModel(
        transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ).save_pretrained(d)
    out["clip"] = d
    d = root / "qwen3vl"
    d.mkdir()
    _, n = _tokenizer(d, CHAT)
    cfg = transformers.Qwen3VLConfig(
        text_config={
            "vocab_size": n,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 256,
            "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_heads": 2,
            "out_hidden_size": 32,
            "deepstack_visual_indexes": [0],
            "patch_size": 4,
            "spatial_merge_size": 1,
            "temporal_patch_size": 1,
        },
    )
    transformers.Qwen3VLModel(cfg).save_pretrained(d)
    out["qwen3vl"] = d
    d = root / "cross"
    d.mkdir()
    _, n = _tokenizer(d)
    bert = transformers.BertConfig(
        vocab_size=n,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        num_labels=1,
    )
    transformers.BertForSequenceClassification(bert).save_pretrained(d)
    out["cross"] = d
    return out


def _padding_invariant(enc):
    batch = enc.encode(TEXTS)
    single = np.concatenate([enc.encode([t]) for t in TEXTS])
    assert batch.shape == (len(TEXTS), enc.dim) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(batch, single, atol=1e-5)  # pooling ignores the padding of shorter texts
    assert np.abs(batch[0] - batch[1]).max() > 1e-3


def test_clip_text_side_matches_get_text_features(models):
    enc = create_item_text_encoder(f"hf-clip-text:{models['clip']}")
    assert enc.dim == 16
    _padding_invariant(enc)
    model = transformers.CLIPModel.from_pretrained(models["clip"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(models["clip"])
    with torch.no_grad():
        ref = model.get_text_features(
            **{k: v for k, v in tok(TEXTS[:1], return_tensors="pt").items() if k != "token_type_ids"}
        )
    ref = getattr(ref, "pooler_output", ref)[0].numpy()
    np.testing.assert_allclose(enc.encode(TEXTS[:1])[0], ref / np.linalg.norm(ref), atol=1e-5)


def test_qwen3_vl_embedding_is_last_token_of_chat_formatted_input(models):
    enc = create_item_text_encoder(f"qwen3-vl:{models['qwen3vl']}")
    assert enc.dim == 32
    _padding_invariant(enc)
    tok = transformers.AutoTokenizer.from_pretrained(models["qwen3vl"])
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": "Represent the user's input."}, {"role": "user", "content": TEXTS[1]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt.startswith("<|system|>") and prompt.endswith("<|assistant|>")
    model = transformers.Qwen3VLModel.from_pretrained(models["qwen3vl"]).eval()
    batch = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[0, -1].numpy()
    np.testing.assert_allclose(enc.encode([TEXTS[1]])[0], h / np.linalg.norm(h), atol=1e-5)


def test_qwen3_vl_mean_pooling_averages_the_real_tokens(models):
    mean = create_item_text_encoder(f"qwen3-vl-mean:{models['qwen3vl']}")
    last = create_item_text_encoder(f"qwen3-vl:{models['qwen3vl']}")
    _padding_invariant(mean)  # padding tokens never enter the mean
    tok = transformers.AutoTokenizer.from_pretrained(models["qwen3vl"])
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": "Represent the user's input."}, {"role": "user", "content": TEXTS[0]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    model = transformers.Qwen3VLModel.from_pretrained(models["qwen3vl"]).eval()
    batch = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[0]
    ref = h.mean(dim=0).numpy()
    np.testing.assert_allclose(mean.encode([TEXTS[0]])[0], ref / np.linalg.norm(ref), atol=1e-5)
    assert np.abs(mean.encode([TEXTS[0]]) - last.encode([TEXTS[0]])).max() > 1e-3


def test_sentence_transformers_model_from_a_local_folder(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    bert = tmp_path / "bert"
    bert.mkdir()
    _, n = _tokenizer(bert)
    torch.manual_seed(1)
    transformers.BertModel(
        transformers.BertConfig(
            vocab_size=n, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
        )
    ).save_pretrained(bert)
    st = SentenceTransformer(modules=[Transformer(str(bert)), Pooling(32, "mean"), Normalize()], device="cpu")
    st.save(str(tmp_path / "st"))
    enc = create_item_text_encoder(f"st:{tmp_path / 'st'}")
    assert enc.dim == 32
    _padding_invariant(enc)
    np.testing.assert_allclose(enc.encode(TEXTS), st.encode(TEXTS, normalize_embeddings=True), atol=1e-5)
    with pytest.raises(LookalikeError, match=r"no modules\.json"):
        create_item_text_encoder(f"st:{bert}")


def test_wrong_directories_are_named(models, tmp_path):
    with pytest.raises(LookalikeError, match=r"no config\.json"):
        create_item_text_encoder(f"qwen3-vl:{tmp_path}")
    with pytest.raises(LookalikeError, match="not qwen3_vl"):
        create_item_text_encoder(f"qwen3-vl:{models['clip']}")
    with pytest.raises(LookalikeError, match="unknown reranker"):
        create_reranker("bge")
    bare = tmp_path / "bert-without-head"  # a plain encoder is not a cross-encoder: its head would be random
    bare.mkdir()
    _, n = _tokenizer(bare)
    transformers.BertModel(
        transformers.BertConfig(
            vocab_size=n, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
        )
    ).save_pretrained(bare)
    with pytest.raises(LookalikeError, match=r"weights missing.*classifier"):
        HFCrossEncoder(str(bare))


def test_cross_encoder_scores_pairs_and_rerank_reorders_only_the_top(models):
    ce = create_reranker(f"hf-cross-encoder:{models['cross']}")
    assert isinstance(ce, HFCrossEncoder)
    s = ce.score(TEXTS[0], TEXTS)
    model = transformers.BertForSequenceClassification.from_pretrained(models["cross"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(models["cross"])
    with torch.no_grad():
        ref = model(**tok([TEXTS[0]], [TEXTS[2]], return_tensors="pt")).logits[0, 0].item()
    assert s.shape == (4,) and s[2] == pytest.approx(ref, abs=1e-5)
    idx = np.array([[0, 1, 2, 3]])
    new_idx, new_sc = rerank((idx, np.array([[4.0, 3, 2, 1]])), [TEXTS[0]], TEXTS, ce, depth=3)
    assert new_idx[0, :3].tolist() == np.argsort(-s[:3], kind="stable").tolist() and new_idx[0, 3] == 3
    assert (np.diff(new_sc[0]) <= 0).all()


def test_text_encoders_and_reranker_leave_the_process_thread_count_alone(models):
    """torch's thread count is process-wide: a model given its own count puts the caller's back."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # a count no model here asks for
    try:
        for name in (f"hf-clip-text:{models['clip']}", f"qwen3-vl:{models['qwen3vl']}"):
            create_item_text_encoder(name, threads=1).encode(TEXTS)
            assert torch.get_num_threads() == 3, name
        HFCrossEncoder(str(models["cross"]), threads=1).score(TEXTS[0], TEXTS)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


QWEN_SPECIAL = ["<|system|>", "<|user|>", "<|assistant|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]
QWEN_CHAT = (  # Qwen's layout: a user turn is a string, or a list of image and text parts
    "{% for m in messages %}<|{{ m['role'] }}|> {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _qwen3_vl_with_vision(directory):
    """A tiny random Qwen3-VL whose tokenizer knows the image tokens, with Qwen2-VL's (PIL) image processor."""
    directory.mkdir()
    chars = sorted(
        {c for t in [*TEXTS, "Represent the user's input.", "system user assistant"] for c in t if c.strip()}
    )
    vocab = ["[PAD]", "[SEP]", "[UNK]", "[CLS]", "[MASK]", *QWEN_SPECIAL, *chars, *(f"##{c}" for c in chars)]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = transformers.BertTokenizerFast(
        str(directory / "vocab.txt"), do_lower_case=False, additional_special_tokens=QWEN_SPECIAL
    )
    tok.chat_template = QWEN_CHAT
    tok.save_pretrained(directory)
    transformers.Qwen2VLImageProcessorPil(
        patch_size=4, merge_size=1, temporal_patch_size=1, min_pixels=16 * 16, max_pixels=32 * 32
    ).save_pretrained(directory)
    ids = tok.convert_tokens_to_ids(QWEN_SPECIAL)
    torch.manual_seed(2)
    cfg = transformers.Qwen3VLConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_heads": 2,
            "out_hidden_size": 32,
            "deepstack_visual_indexes": [0],
            "patch_size": 4,
            "spatial_merge_size": 1,
            "temporal_patch_size": 1,
        },
        image_token_id=ids[4],
        vision_start_token_id=ids[3],
        vision_end_token_id=ids[5],
    )
    model = transformers.Qwen3VLModel(cfg)
    model.save_pretrained(directory)
    return model.eval(), tok


def test_qwen3_vl_reads_text_and_figure_together(tmp_path):
    from PIL import Image

    model, tok = _qwen3_vl_with_vision(tmp_path / "qwen3vl")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8))
    last = create_item_text_encoder(f"qwen3-vl:{tmp_path / 'qwen3vl'}")
    mean = create_item_text_encoder(f"qwen3-vl-mean:{tmp_path / 'qwen3vl'}")
    v = last.encode_multimodal([TEXTS[0], TEXTS[0]], [image, None])
    assert v.shape == (2, 32) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(v[1], last.encode([TEXTS[0]])[0], atol=1e-5)  # no figure: the text input alone
    assert np.abs(v[0] - v[1]).max() > 1e-3  # the figure changes the vector
    # the reference: the chat prompt with one image token per patch, and M-RoPE told which tokens are image tokens
    prompt = tok.apply_chat_template(
        [
            {"role": "system", "content": "Represent the user's input."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TEXTS[0]}]},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    pix = transformers.Qwen2VLImageProcessorPil.from_pretrained(tmp_path / "qwen3vl")(
        images=[image], return_tensors="pt"
    )
    prompt = prompt.replace("<|image_pad|>", "<|image_pad|>" * int(pix["image_grid_thw"][0].prod()))
    batch = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        h = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            mm_token_type_ids=(batch["input_ids"] == model.config.image_token_id).long(),
            pixel_values=pix["pixel_values"],
            image_grid_thw=pix["image_grid_thw"],
        ).last_hidden_state[0]
    np.testing.assert_allclose(v[0], (h[-1] / h[-1].norm()).numpy(), atol=1e-5)
    m = mean.encode_multimodal([TEXTS[0]], [image])[0]
    np.testing.assert_allclose(m, (h.mean(0) / h.mean(0).norm()).numpy(), atol=1e-5)  # mean pooling, same input
    # a bank searched with fusion 'multimodal': each question's vector is the model's reading of text and figure
    from lookalike.catalogue.schema import LoadReport
    from lookalike.itembank.figures import FigureFusion
    from lookalike.itembank.loading import Item, ItemBank, ItemBankSchema
    from lookalike.itembank.search import ItemSearcher

    items = []
    for n, t in enumerate(TEXTS):
        path = tmp_path / f"f{n}.png"
        Image.fromarray(np.random.default_rng(n).integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(path)
        items.append(Item(f"t{n}", t, [path]))
    bank = ItemBank(items, ItemBankSchema(), LoadReport("made-up"))
    s = ItemSearcher(bank, f"qwen3-vl-mean:{tmp_path / 'qwen3vl'}", figures=FigureFusion(method="multimodal"))
    top = s.rank(s.query(TEXTS[1], figure=Image.open(tmp_path / "f1.png")), 1, "dense")[0]
    assert top.id == "t1" and top.score == pytest.approx(1.0, abs=1e-4)
