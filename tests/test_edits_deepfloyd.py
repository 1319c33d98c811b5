"""The DeepFloyd backend on a tiny IF-shaped pipeline saved with save_pretrained, and its fail-fast loading."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

from difflab.edits import BackendUnavailable, load_backend, rect_mask
from difflab.edits import algorithms as A
from difflab.edits.deepfloyd import STAGE1, DeepFloydBackend, probe_hub
from test_edits_support import EMB_DIM, one_thread, tiny_if_backend, tiny_if_folders  # noqa: F401

ADVICE = ("licence", "HF_TOKEN", "local folder")


def _image(b, seed=0):
    return torch.rand(1, *b.image_shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _in_range(x, b):
    lo, hi = b.value_range
    return bool(torch.isfinite(x).all() and x.min() >= lo and x.max() <= hi)


def test_tiny_pipeline_loads_through_the_hub_loader_with_learned_variance():
    b = tiny_if_backend()
    assert b.image_shape == (3, 32, 32) and b.value_range == (-1.0, 1.0)
    assert b.learned_variance and len(b.alphas_cumprod) == 1000
    assert b.condition("a high quality photo").shape == (1, 77, EMB_DIM)
    est = b.predict(_image(b), 990, b.uncond())
    assert est.eps.shape == (1, 3, 32, 32) and est.variance.shape == (1, 3, 32, 32)


def test_every_algorithm_runs_on_the_tiny_pipeline_and_is_seeded():
    b = tiny_if_backend()
    img = _image(b)
    noisy = A.forward_process(b, img)
    assert sorted(noisy) == [250, 500, 750]
    blurred, sigmas = A.best_blur(torch.cat(list(noisy.values())), img.expand(3, -1, -1, -1))
    assert blurred.shape == (3, 3, 32, 32) and len(sigmas) == 3
    one = A.one_step_denoise(b, noisy)
    assert one[500].shape == img.shape
    it = A.denoise_noisy_image(b, img, i_start=20)
    assert it.frame_steps[0] == 390 and it.frame_steps[-1] == -1 and len(it.frames) == 4
    assert _in_range(it.image, b)
    s1 = A.sample(b, "a high quality photo", gamma=None, seed=180).image
    s2 = A.sample(b, "a high quality photo", gamma=None, seed=180).image
    assert torch.equal(s1, s2) and not torch.equal(s1, A.sample(b, gamma=None, seed=181).image)
    steps = A.sample_at_steps(b, ["a man wearing a hat", "a rocket ship"], steps=(3, 5))
    assert steps[3].shape == (2, 3, 32, 32) and not torch.equal(steps[3], steps[5])
    edits = A.sdedit(b, img, i_starts=(20, 30))
    assert set(edits) == {20, 30} and all(_in_range(x, b) for x in edits.values())
    i2i = A.image_to_image(b, img, "an oil painting of a snowy mountain village", i_starts=(30,))
    assert not torch.equal(i2i[30], edits[30])
    inp = A.inpaint(b, img, rect_mask((32, 32), 4, 4, 10, 12))
    m = rect_mask((32, 32), 4, 4, 10, 12)
    assert torch.equal(inp.image * (1 - m), img * (1 - m))
    for view in ("flip", "rot90", "rot180"):
        assert A.anagram(b, "a man wearing a hat", "a rocket ship", view=view).image.shape == (1, 3, 32, 32)
    hyb = A.hybrid(b, "a man wearing a hat", "a rocket ship", num=2)
    assert hyb.image.shape == (2, 3, 32, 32) and _in_range(hyb.image, b)


def test_stage_two_upsamples_each_result():
    b = tiny_if_backend()
    up = b.upsample(_image(b).expand(2, -1, -1, -1), ["a rocket ship", "a man wearing a hat"], num_inference_steps=2)
    assert up.shape == (2, 3, 64, 64) and torch.isfinite(up).all()
    with pytest.raises(ValueError, match="one prompt per image"):
        b.upsample(_image(b), ["a", "b"])


def test_unknown_prompt_is_a_one_line_error_naming_the_fix():
    b = tiny_if_backend()
    with pytest.raises(ValueError, match="encode_prompts=True") as e:
        A.sample(b, "a purple cow")
    assert "\n" not in str(e.value)


def test_encoded_prompts_are_cached_on_disk(tmp_path):
    s1, _, emb = tiny_if_folders()
    b = DeepFloydBackend(stage1=s1, stage2=None, embeddings=emb, device="cpu", encode_prompts=True,
                         embedding_cache=tmp_path)
    calls = []
    b._encode = lambda p: calls.append(p) or torch.ones(1, 77, EMB_DIM)
    assert torch.equal(b.condition("a purple cow"), torch.ones(1, 77, EMB_DIM))
    b2 = DeepFloydBackend(stage1=s1, stage2=None, embeddings=emb, device="cpu", embedding_cache=tmp_path)
    assert torch.equal(b2.condition("a purple cow"), torch.ones(1, 77, EMB_DIM)) and calls == ["a purple cow"]


def test_hub_id_without_weights_offline_fails_at_once_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(BackendUnavailable) as e:
        load_backend("deepfloyd", stage1=STAGE1, device="cpu")
    assert time.monotonic() - start < 15
    assert all(a in str(e.value) for a in ADVICE) and "\n" not in str(e.value)


def test_hub_probe_gives_up_within_its_timeout_on_a_silent_server(monkeypatch):
    """A server that accepts connections and never answers must not hang the loader."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True).start()
    start = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable, match="HF_TOKEN") as e:
            probe_hub(STAGE1, None, timeout=1.0, endpoint=f"http://127.0.0.1:{srv.getsockname()[1]}")
        assert 0.9 < time.monotonic() - start < 10
        assert "ReadTimeout" in str(e.value)
    finally:
        srv.close()


def test_hub_probe_reports_a_licence_not_accepted(monkeypatch):
    """The hub answers 403 GatedRepo for a token without the licence: say so, quickly."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from huggingface_hub import constants

    class Gated(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(403)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("X-Error-Message", "Access to model DeepFloyd/IF-I-XL-v1.0 is restricted")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    srv = HTTPServer(("127.0.0.1", 0), Gated)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(BackendUnavailable, match="licence not accepted") as e:
            probe_hub(STAGE1, "hf_dummy", timeout=5.0, endpoint=f"http://127.0.0.1:{srv.server_port}")
        assert all(a in str(e.value) for a in ADVICE)
    finally:
        srv.shutdown()


def test_local_folder_without_a_pipeline_is_unavailable_not_a_crash(tmp_path):
    with pytest.raises(BackendUnavailable, match="save_pretrained"):
        DeepFloydBackend(stage1=tmp_path, stage2=None, device="cpu")
