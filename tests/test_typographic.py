"""Typographic attacks: deterministic pasting, pixel cover, success bookkeeping, image sets, stage, pages."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from store.schema import Run
from store.writes import register_model
from worker.analyses import typographic as T
from worker.compute.corpus import CorpusError
from worker.compute.layers import catalogue
from worker.compute.zeroshot import classifier


def photo(seed: int, size=(90, 70)) -> PILImage.Image:
    rng = np.random.default_rng(seed)
    return PILImage.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def image_set(tmp_path):
    """Two class folders of real PNGs, one corrupt file, and one image outside any class folder."""
    root = tmp_path / "set"
    for label, seeds in {"cat": (1, 2, 3), "dog": (4, 5)}.items():
        (root / label).mkdir(parents=True)
        for s in seeds:
            photo(s).save(root / label / f"{s}.png")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    photo(9).save(root / "loose.png")
    return root


def test_pasting_is_deterministic_and_changes_the_image():
    img = T.fit(photo(0), 64)
    a, b = T.paste_text(img, "pizza"), T.paste_text(img, "pizza")
    assert a.tobytes() == b.tobytes() and a.tobytes() != img.tobytes()
    assert img.tobytes() == T.fit(photo(0), 64).tobytes()  # the original is left alone


def test_text_lands_at_the_eight_positions():
    img = PILImage.new("RGB", (200, 200), (90, 120, 60))
    changed = np.asarray(T.paste_text(img, "ab")) != np.asarray(img)
    changed = changed.any(-1)
    for fx, fy in T.ATTACK_POSITIONS:
        x, y = round(fx * 200), round(fy * 200)
        assert changed[y:y + 20, x:x + 20].any(), (fx, fy)
    assert len(T.ATTACK_POSITIONS) == 8


def test_pixel_cover_is_the_share_of_changed_pixels():
    img = T.fit(photo(3), 64)
    after = T.paste_text(img, "iPod")
    a, b = img.load(), after.load()
    direct = sum(a[x, y] != b[x, y] for x in range(64) for y in range(64)) / (64 * 64)
    assert T.pixel_cover(img, after) == pytest.approx(direct)
    assert 0 < direct < 0.5
    box = PILImage.new("RGB", (100, 100), "white")
    marked = box.copy()
    marked.paste((255, 254, 255), (10, 10, 20, 20))  # one channel off by one still counts
    assert T.pixel_cover(box, marked) == pytest.approx(0.01)
    assert T.pixel_cover(box, box) == 0
    with pytest.raises(ValueError):
        T.pixel_cover(box, box.resize((50, 50)))


def test_success_counts_leave_out_images_already_of_the_attack_class():
    labels = ["cat", "dog", "pizza", "dog", "cat", "cat"]
    clean = ["cat", "pizza", "pizza", "dog", "dog", "cat"]
    attacked = ["pizza", "pizza", "pizza", "dog", "pizza", "cat"]
    got = T.success_counts(clean, attacked, labels, "pizza")
    # image 1 was already classified pizza, image 2 is labelled pizza: neither counts
    assert got == {"images": 6, "eligible": 4, "success": 2, "excluded_label": 1, "excluded_clean": 1,
                   "success_rate": 0.5}
    assert T.success_counts(["pizza"], ["pizza"], ["cat"], "pizza")["success_rate"] is None


def test_attack_spec_parses_text_and_class():
    assert T.Attack.parse("pizza") == T.Attack("pizza", "pizza")
    assert T.Attack.parse("trash=waste container") == T.Attack("trash", "waste container")
    with pytest.raises(ValueError):
        T.Attack.parse("=pizza")


def test_folder_set_skips_and_counts_bad_and_unlabelled_files(image_set):
    data = T.open_images(T.labelled_images(image_set), 32)
    assert data.labels == ["cat", "cat", "cat", "dog", "dog"]
    assert all(im.size == (32, 32) for im in data.images)
    assert sum(data.skipped.values()) == 2 and data.skipped.get("no-label") == 1


def test_manifests_give_labels(image_set, tmp_path):
    csv_path = image_set / "m.csv"
    csv_path.write_text("path,label\ncat/1.png,cat\ndog/4.png,dog\nmissing.png,dog\n")
    data = T.open_images(T.labelled_images(csv_path), 32)
    assert data.labels == ["cat", "dog"] and data.skipped == {"missing": 1}
    jsonl = image_set / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"path": "cat/2.png", "label": "cat"}]))
    assert [y for _, y in T.labelled_images(jsonl)] == ["cat"]
    bad = image_set / "bad.csv"
    bad.write_text("path,caption\ncat/1.png,a cat\n")
    with pytest.raises(CorpusError, match="lack a path or a label"):
        T.labelled_images(bad)
    with pytest.raises(CorpusError):
        T.labelled_images(tmp_path / "nowhere")


def test_zero_shot_weights_are_the_normalised_prompt_embeddings(tiny_rn):
    import torch

    clf = classifier(tiny_rn, ["cat", "dog"])
    with torch.no_grad():
        emb = tiny_rn.model.encode_text(tiny_rn.tokenizer(["a photo of a cat", "a photo of a dog"]))
    torch.testing.assert_close(clf.weights, emb / emb.norm(dim=-1, keepdim=True))
    probs = clf.probs(tiny_rn, [photo(1), photo(2)])
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


def test_run_excludes_images_the_model_already_puts_in_the_attack_class(tiny_rn, image_set):
    data = T.open_images(T.labelled_images(image_set), tiny_rn.image_size)
    labels = ["cat", "dog", "pizza", "radio"]
    clf = classifier(tiny_rn, labels)
    clean = T.tops(clf, clf.probs(tiny_rn, data.images))
    target = clean[0]  # the random model's favourite: those images cannot count as successes
    attacks = [T.Attack("pizza", "pizza"), T.Attack("meow", target)]
    result = T.run_attacks(tiny_rn, data, attacks, labels, "a photo of a {}")
    rep = result["report"]
    by_target = {a["target"]: a for a in rep["attacks"]}
    favourite = by_target[target]
    assert favourite["eligible"] == sum(c != target and y != target for c, y in zip(clean, data.labels, strict=True))
    assert favourite["eligible"] < len(data.images)
    for a in rep["attacks"]:
        assert a["eligible"] + a["excluded_label"] + a["excluded_clean"] == a["images"] == 5
        assert 0 <= a["success"] <= a["eligible"] and 0 < a["pixel_cover"] < 1
    assert rep["clean_accuracy"] == sum(c == y for c, y in zip(clean, data.labels, strict=True)) / 5
    assert len(result["examples"]) == 2 * 3


@pytest.fixture
def attack_site(store, client, tiny_rn, image_set):
    with store.sessions.begin() as s:
        register_model(s, "tiny", "tiny-rn", None, tiny_rn.image_size, catalogue(tiny_rn))
    report = T.attack_stage(store, "tiny", tiny_rn, image_set, [T.Attack("pizza", "pizza")], "a photo of a {}",
                            examples=2)
    return client, report


def test_stage_records_a_run_and_the_page_shows_it(attack_site):
    client, report = attack_site
    assert report["labels"] == ["cat", "dog", "pizza"] and report["skipped"] == {"no-label": 1, "truncated": 1}
    js = client.get("/models/tiny/attacks.json").json()
    (run,) = js["runs"]
    assert run["attacks"][0]["target"] == "pizza" and run["attacks"][0]["eligible"] == report["attacks"][0]["eligible"]
    assert run["n_images"] == 5 and len(run["examples"]) == 2
    after = client.get(run["examples"][0]["after"])
    assert after.status_code == 200 and after.headers["content-type"] == "image/webp"
    html = client.get("/models/tiny/attacks").text
    assert "<q>pizza</q>" in html and "image 0 with the text pizza written on it" in html
    assert "microscope worker stroop tiny" in html  # no Stroop run yet: says how to make one


def test_attacks_page_of_unknown_model_is_404(attack_site):
    client, _ = attack_site
    miss = client.get("/models/nope/attacks.json")
    assert miss.status_code == 404 and "tiny" in miss.json()["error"]


def test_worker_command_attacks_with_every_label_by_default(settings, store, image_set):
    from typer.testing import CliRunner

    from app.liveserver import settings_env
    CONFIG_DIR = Path(__file__).parent / "model_configs"
    from worker.cli.stages import worker_cli

    args = ["typographic", "tiny-rn", "--config-dir", str(CONFIG_DIR), "--name", "tiny", "--device", "cpu",
            "--images", str(image_set)]
    result = CliRunner().invoke(worker_cli, args, env=settings_env(settings))
    assert result.exit_code == 0, result.output
    assert "'cat' -> cat" in result.output and "'dog' -> dog" in result.output and "5 images" in result.output
    bad = CliRunner().invoke(worker_cli, [*args, "--template", "a photo"], env=settings_env(settings))
    assert bad.exit_code == 2 and "exactly one {}" in bad.output
    gone = CliRunner().invoke(worker_cli, [*args[:-1], str(image_set / "nowhere")], env=settings_env(settings))
    assert gone.exit_code == 2 and "nowhere" in gone.output


# -- the live lab (model on the server's probe thread) ----------------------------------------------

@pytest.fixture
def lab(probe_model, store, client):
    """The probe model 'tiny' with one stored image in the store."""
    from store.schema import Image

    img = photo(7, (80, 80))
    rel = store.cache.put_image(img, fmt="png")
    with store.sessions.begin() as s:
        row = Image(sha256="ab" * 32, source="test", caption="noise", width=80, height=80, path=rel)
        s.add(row)
        s.flush()
        image_id = row.id
    return client, probe_model, img, image_id


def png_bytes(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_lab_form_lists_stored_images_without_loading_the_model(lab):
    client, _, _, image_id = lab
    js = client.get("/models/tiny/attacks/try.json").json()
    assert [s["id"] for s in js["stored"]] == [image_id] and js["result"] is None
    assert js["label_source"] == "the 1,000 ImageNet classes"
    html = client.get("/models/tiny/attacks/try").text
    assert f'value="{image_id}"' in html and 'enctype="multipart/form-data"' in html
    assert getattr(client.app.state, "probe", None) is None


def test_lab_classifies_before_and_after_as_the_worker_does(lab):
    client, loaded, img, image_id = lab
    r = client.get("/models/tiny/attacks/try.json",
                   params={"image_id": image_id, "text": "pizza", "labels": "cat, dog,radio", "k": 4})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    direct = T.try_attack(loaded, img, "pizza", ["cat", "dog", "radio", "pizza"], k=4)
    assert [c["label"] for c in res["before"]] == [c["label"] for c in direct["before"]]
    assert [c["label"] for c in res["after"]] == [c["label"] for c in direct["after"]]
    assert res["pixel_cover"] == pytest.approx(direct["pixel_cover"]) and res["classes"] == 4
    assert res["target"] == "pizza" and res["before_image"].startswith("data:image/png;base64,")
    assert res["succeeded"] == (res["after"][0]["label"] == "pizza" != res["before"][0]["label"])
    page = client.get("/models/tiny/attacks/try", params={"image_id": image_id, "text": "trash=radio",
                                                          "labels": "cat,dog"})
    assert page.status_code == 200 and "the image with trash written on it" in page.text
    assert "class <strong>radio</strong>" in page.text


def test_lab_upload(lab):
    client, loaded, img, _ = lab
    r = client.post("/models/tiny/attacks/try", files={"file": ("x.png", png_bytes(img), "image/png")},
                    data={"text": "pizza", "labels": "cat,dog"}, headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    direct = T.try_attack(loaded, img, "pizza", ["cat", "dog", "pizza"])
    assert [c["label"] for c in res["after"]] == [c["label"] for c in direct["after"]]
    assert res["source"] == {"upload": "x.png"}


def test_lab_bad_input_is_a_clear_4xx(lab, probe_model, store):
    client, _, img, image_id = lab
    url = "/models/tiny/attacks/try.json"
    assert client.get(url, params={"image_id": image_id, "text": "x" * 41}).status_code == 422
    assert client.get(url, params={"image_id": image_id, "text": "=cat"}).status_code == 422
    assert client.get(url, params={"image_id": image_id}).status_code == 422  # no attack text
    assert client.get(url, params={"image_id": image_id, "text": "a", "labels": ",".join(map(str, range(301)))}
                      ).status_code == 422
    missing = client.get(url, params={"image_id": 999999, "text": "pizza"})
    assert missing.status_code == 404 and "999999" in missing.json()["error"]
    assert client.get("/models/nope/attacks/try.json").status_code == 404
    not_image = client.post("/models/tiny/attacks/try", files={"file": ("x.png", b"GIF89a nope", "image/png")},
                            data={"text": "pizza"}, headers={"Accept": "application/json"})
    assert not_image.status_code in (415, 422) and "image" in not_image.json()["error"]
    with store.sessions.begin() as s:
        from store.schema import Model

        s.scalar(select(Model).where(Model.name == "tiny")).weights = None
    random_init = client.get(url, params={"image_id": image_id, "text": "pizza"})
    assert random_init.status_code == 409 and "without weights" in random_init.json()["error"]


def test_examples_show_successes_first_then_eligible_images():
    labels = ["cat", "pizza", "dog", "cat"]
    clean = ["cat", "pizza", "dog", "cat"]
    attacked = ["cat", "pizza", "dog", "pizza"]
    assert T.example_order(clean, attacked, labels, "pizza") == [3, 0, 2, 1]


# -- the demo build's text stages -------------------------------------------------------------------

def test_demo_stages_run_once_on_the_probe_corpus_pictures(store, tiny_rn, tmp_path, settings, monkeypatch):
    from worker.demo import text_stages
    from worker.demo.build import demo_options
    from worker.pipeline.contract import BuildContext
    from worker.pipeline.runner import run_pipeline

    monkeypatch.chdir(tmp_path)  # relative folders, as `make demo` gives them (data/...)
    settings = settings.model_copy(update={"data_dir": Path("data")})
    corpus = Path("data/demo/corpus")
    (corpus / "clipart").mkdir(parents=True)
    rows = []
    for i, (kind, concept) in enumerate([("photo", "A Pizza"), ("photo", "apple"), ("word", "pizza"),
                                         ("photo", "a cat"), ("object", "an apple"), ("photo", "an apple")]):
        photo(i).save(corpus / "clipart" / f"{i}.png")
        rows.append({"path": f"clipart/{i}.png", "kind": kind, "concept": concept, "caption": concept})
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with store.sessions.begin() as s:
        register_model(s, "demo", "tiny-rn", None, tiny_rn.image_size, catalogue(tiny_rn))

    labels = [y for _, y in T.labelled_images(text_stages.attack_set(settings.data_dir, corpus))]
    assert labels == ["pizza", "apple", "cat", "apple"]  # photos only, lower case, no leading article
    assert text_stages.pick_attacks(["zebra", "apple", "pizza", "cat", "kite"], 3) == ["pizza", "cat", "apple"]
    (tmp_path / "f.txt").write_text("[happy]\nhappy\nproud\n[sad]\nsad\nlonely\n")
    options = {**demo_options(settings.data_dir, corpus), "emotions": {"feelings_path": tmp_path / "f.txt"}}
    ctx = BuildContext(store, tiny_rn, "demo", corpus, options=options, progress=False)
    only = ["emotions", "typographic", "stroop"]
    first = {o.stage: o for o in run_pipeline(ctx, only=only, echo=lambda _: None)}
    assert [o.status for o in first.values()] == ["done"] * 3
    with store.sessions() as s:
        reports = {r.stage: r.report for r in s.scalars(select(Run).where(Run.stage.in_(only)))}
    assert reports["typographic"]["n_images"] == 4 and reports["typographic"]["labels"] == ["pizza", "apple", "cat"]
    assert "congruent_accuracy" in reports["stroop"]["scores"] and reports["emotions"]["words"] == 4
    again = run_pipeline(ctx, only=only, echo=lambda _: None)
    assert [(o.status, o.reason) for o in again] == [("skipped", "up to date")] * 3
