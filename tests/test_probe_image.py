"""Live image probe: uploads checked by content, the model's top neurons with heatmaps, stored images."""
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from sqlalchemy import select

from store.schema import Image, Model
from worker.compute.layers import activations

CONFIG_DIR = __import__("pathlib").Path(__file__).parent / "model_configs"

JSON = {"accept": "application/json"}


def png_bytes(img: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def picture() -> PILImage.Image:
    """A 96×72 image with structure (so units differ): a red disc on a blue-green gradient."""
    y, x = np.mgrid[0:72, 0:96]
    rgb = np.stack([x * 2, y * 3, 255 - x * 2], axis=-1).astype(np.uint8)
    rgb[(x - 60) ** 2 + (y - 30) ** 2 < 300] = (230, 20, 20)
    return PILImage.fromarray(rgb)


def upload(client, data: bytes, filename="photo.png", content_type="image/png", **form):
    return client.post("/probe/image", files={"file": (filename, data, content_type)},
                       data={"model": "tiny", **form}, headers=JSON)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width × height pixels but carries one tiny compressed row: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_upload_gives_the_models_top_neurons_with_heatmaps(probe_model, client):
    img = picture()
    r = upload(client, png_bytes(img), k="6")
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    with torch.inference_mode():  # the same forward pass, here in the test process
        acts = activations(probe_model, probe_model.preprocess(img).unsqueeze(0), ["layer4"])["layer4"][0].numpy()
    means = acts.reshape(acts.shape[0], -1).mean(axis=1)  # a ResNet's value: mean before the final ReLU
    assert [u["unit"] for u in result["units"]] == list(np.argsort(-means)[:6])
    assert result["grid"] == list(acts.shape[1:]) and result["layer"] == "layer4"
    for u in result["units"]:
        assert np.allclose(u["heatmap"], acts[u["unit"]], atol=1e-3)
        assert u["overlay"].startswith("data:image/png;base64,") and u["url"] == f"/models/tiny/layer4/{u['unit']}"
    assert result["source"] == {"upload": "photo.png"}
    assert "before the final ReLU" in result["signal"]


def test_upload_page_renders_heatmaps_with_alt_text(probe_model, client):
    r = client.post("/probe/image", files={"file": ("p.png", png_bytes(picture()), "image/png")},
                    data={"model": "tiny", "k": "3"})
    assert r.status_code == 200 and r.text.count('alt="where tiny/layer4/') == 3
    form = client.get("/probe/image")
    assert form.status_code == 200 and 'enctype="multipart/form-data"' in form.text


def test_type_is_sniffed_from_the_content_not_the_name(probe_model, client):
    buf = io.BytesIO()
    picture().save(buf, format="JPEG")
    assert upload(client, buf.getvalue(), filename="notes.txt", content_type="text/plain").status_code == 200
    r = upload(client, b"<html>not an image</html>", filename="cat.png")
    assert r.status_code == 415 and "not an image" in r.json()["error"]
    assert upload(client, b"%PDF-1.4 fake", filename="cat.jpg", content_type="image/jpeg").status_code == 415


def test_damaged_and_empty_uploads_are_refused_clearly(probe_model, client):
    data = png_bytes(picture())
    r = upload(client, data[: len(data) // 2])
    assert r.status_code == 422 and "damaged or truncated" in r.json()["error"]
    assert upload(client, b"").status_code == 422
    r = client.post("/probe/image", data={"model": "tiny"}, headers=JSON)
    assert r.status_code == 415 and "multipart" in r.json()["error"]
    r = client.post("/probe/image", files={"other": ("a.png", data, "image/png")}, data={"model": "tiny"},
                    headers=JSON)
    assert r.status_code == 422 and "`file`" in r.json()["error"]
    assert upload(client, data, k="0").status_code == 422


@pytest.mark.parametrize("width,height", [(8000, 6000), (40000, 40000)])
def test_decompression_bombs_are_refused_before_decoding(probe_model, client, width, height):
    """8000×6000 is over our 40 M pixel limit; 40000×40000 is over Pillow's own bomb threshold too."""
    bomb = png_header_only(width, height)
    assert len(bomb) < 200
    r = upload(client, bomb)
    assert r.status_code == 413 and "decompression bomb" in r.json()["error"]


def test_oversized_upload_is_413(probe_model, client):
    r = upload(client, b"\x89PNG" + b"\x00" * (11 * 1024 * 1024))
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_stored_image_by_id(probe_model, store, client):
    img = picture()
    with store.sessions.begin() as s:
        row = Image(sha256="ab" * 32, path=store.cache.put_image(img, fmt="png"), caption="a red disc",
                    width=img.width, height=img.height)
        s.add(row)
        s.flush()
        image_id = row.id
    r = client.get("/probe/image.json", params={"model": "tiny", "image_id": image_id, "k": 4})
    assert r.status_code == 200
    assert r.json()["result"]["source"] == {"image_id": image_id, "caption": "a red disc"}
    assert len(r.json()["result"]["units"]) == 4
    assert upload(client, png_bytes(img), k="4").json()["result"]["units"] == r.json()["result"]["units"]
    assert any(s["id"] == image_id for s in client.get("/probe/image.json").json()["stored"])
    assert client.get("/probe/image.json", params={"model": "tiny", "image_id": 999999}).status_code == 404
    assert client.get("/probe/image.json", params={"model": "tiny", "image_id": "x"}).status_code == 422


def test_model_without_weights_or_unknown_is_refused(probe_model, toy_model, store, client):
    r = upload(client, png_bytes(picture()), model="toy")
    assert r.status_code == 409 and "without weights" in r.json()["error"]
    assert upload(client, png_bytes(picture()), model="nope").status_code == 404
    with store.sessions() as s:
        assert s.scalar(select(Model.weights).where(Model.name == "toy")) is None


@pytest.fixture(params=["tiny-rn", "tiny-vit"])
def examples_and_probe_model(request, store, tmp_path):
    """Model 'tiny' (ResNet, or a ViT with tok pooling) registered with a real checkpoint, read-out stored."""
    from worker.analyses.attribution import store_readout
    from worker.analyses.examples import register
    from worker.compute.models import load_model, save_checkpoint

    torch.manual_seed(0)
    random = load_model(request.param, config_dirs=(CONFIG_DIR,))
    path = save_checkpoint(random.model, tmp_path / f"{request.param}.pt")
    loaded = load_model(request.param, str(path), config_dirs=(CONFIG_DIR,))
    register(store, loaded, "tiny")
    store_readout(store, "tiny", loaded, [CONFIG_DIR])
    return loaded


def test_an_image_gets_the_same_number_in_examples_and_in_the_image_probe(examples_and_probe_model, store, client,
                                                                         tmp_path):
    """One definition of a unit's value: the examples stage ranks the only image of a corpus by exactly the
    number the image probe shows for it (ResNet: mean before the final ReLU; ViT tok: the class token)."""
    from store.schema import DatasetExample, Layer, Unit
    from worker.analyses.examples import ExampleOptions, run_examples

    loaded = examples_and_probe_model
    (tmp_path / "corpus").mkdir()
    png = png_bytes(picture())
    (tmp_path / "corpus" / "picture.png").write_bytes(png)
    run_examples(store, loaded, "tiny", tmp_path / "corpus", None,
                 ExampleOptions(k=1, batch_size=1, workers=0, progress=False, samples=0))
    result = upload(client, png, k="64").json()["result"]
    with store.sessions() as s:
        stored = dict(s.execute(select(Unit.index, DatasetExample.activation).join(Unit).join(Layer)
                                .where(Layer.name == result["layer"], DatasetExample.sign == "top")).all())
    assert len(result["units"]) == 64
    for card in result["units"]:
        assert card["score"] == pytest.approx(stored[card["unit"]], abs=2e-5)
    assert result["signal"] and result["signal"] in client.get(result["units"][0]["url"]).text
