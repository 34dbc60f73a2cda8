"""Labels through the real app: public reads, token-only writes, history, 409 on a stale edit, CSRF."""
import re
import threading

import pytest
from sqlalchemy import select

from app.labelling import StaleEdit, append_auto_label, save_label
from app.lookup import unit_by_key
from store.keys import UnitKey
from store.schema import Label, UnitText

URL = "/models/toy/layer4/3"
API = {"Authorization": "Bearer test-token", "Accept": "application/json"}


@pytest.fixture
def site(toy_model, client):
    return client


def unit_id(store, unit=3):
    with store.sessions() as s:
        return unit_by_key(s, UnitKey("toy", "layer4", unit)).id


def versions(store, unit=3, source="human"):
    with store.sessions() as s:
        return [(r.version, r.text, r.author) for r in s.scalars(
            select(Label).where(Label.unit_id == unit_id(store, unit), Label.source == source)
            .order_by(Label.version))]


def login(client, name="ann", token="test-token"):
    r = client.post("/login", data={"name": name, "token": token, "next": URL}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == URL
    return re.search(r'name="csrf_token" value="([0-9a-f]+)"', client.get(URL).text).group(1)


def test_reads_are_public_writes_need_the_token(site, toy_model):
    assert site.get(URL + "/labels").status_code == 200
    assert site.get(URL + "/labels.json").json()["human"] is None
    no = site.post(URL + "/labels", json={"text": "yellow"}, headers={"Accept": "application/json"})
    assert no.status_code == 401 and "editor token" in no.json()["error"]
    wrong = site.post(URL + "/labels", json={"text": "yellow"},
                      headers={**API, "Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert versions(toy_model) == []
    ok = site.post(URL + "/labels", json={"text": "yellow", "author": "ann"}, headers=API)
    assert ok.status_code == 201 and ok.json()["label"]["version"] == 1
    assert versions(toy_model) == [(1, "yellow", "ann")]


def test_no_token_configured_means_no_editing(site, settings):
    settings.editor_token = None
    r = site.post(URL + "/labels", json={"text": "x"}, headers=API)
    assert r.status_code == 401 and "disabled" in r.json()["error"]


def test_history_is_kept_and_shown(site, toy_model):
    site.post(URL + "/labels", json={"text": "yellow", "author": "ann"}, headers=API)
    site.post(URL + "/labels", json={"text": "yellow / banana", "based_on": 1, "author": "bob"}, headers=API)
    assert versions(toy_model) == [(1, "yellow", "ann"), (2, "yellow / banana", "bob")]
    card = site.get(URL + ".json").json()["sections"]["labels"]
    assert card["human"]["text"] == "yellow / banana" and card["human"]["author"] == "bob"
    assert [(h["version"], h["author"]) for h in card["history"]] == [(2, "bob"), (1, "ann")]
    assert all(h["at"] for h in card["history"])
    html = site.get(URL).text
    assert "History: 2 label versions" in html and "“yellow”" in html and "ann" in html and "bob" in html
    assert site.get(URL + ".json").json()["title"].endswith("yellow / banana")


def test_stale_edit_is_refused_with_the_current_label(site, toy_model):
    site.post(URL + "/labels", json={"text": "yellow", "author": "ann"}, headers=API)
    stale = site.post(URL + "/labels", json={"text": "lemon", "author": "bob"}, headers=API)  # based on nothing
    assert stale.status_code == 409
    body = stale.json()
    assert body["current"]["text"] == "yellow" and body["current"]["version"] == 1
    assert body["yours"] == {"text": "lemon", "based_on": None}
    site.post(URL + "/labels", json={"text": "yellow fruit", "based_on": 1}, headers=API)
    older = site.post(URL + "/labels", json={"text": "lemon", "based_on": 1}, headers=API)
    assert older.status_code == 409 and older.json()["current"]["version"] == 2
    assert [v for v, _, _ in versions(toy_model)] == [1, 2]
    retry = site.post(URL + "/labels", json={"text": "lemon", "based_on": 2, "author": "bob"}, headers=API)
    assert retry.status_code == 201
    assert [t for _, t, _ in versions(toy_model)] == ["yellow", "yellow fruit", "lemon"]


def test_stale_form_edit_shows_the_users_text_again(site, toy_model):
    csrf = login(site)
    site.post(URL + "/labels", json={"text": "yellow"}, headers=API)
    r = site.post(URL + "/labels", data={"text": "my careful label", "based_on": "", "csrf_token": csrf})
    assert r.status_code == 409
    assert 'value="my careful label"' in r.text and "yellow" in r.text
    assert 'name="based_on" value="1"' in r.text


def test_concurrent_edits_from_one_version_one_wins(toy_model):
    uid = unit_id(toy_model)
    with toy_model.sessions() as s:
        save_label(s, uid, "v1", "ann", None)
    outcomes, barrier = [], threading.Barrier(6)

    def edit(i):
        with toy_model.sessions() as s:
            barrier.wait()
            try:
                save_label(s, uid, f"edit {i}", f"editor{i}", 1)
                outcomes.append("saved")
            except StaleEdit:
                outcomes.append("stale")

    threads = [threading.Thread(target=edit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["saved"] + ["stale"] * 5
    assert [v for v, _, _ in versions(toy_model)] == [1, 2]


@pytest.mark.parametrize("body", [{"text": "   "}, {"text": "x" * 201}, {"text": "a\x00b"},
                                  {"text": "ok", "based_on": "abc"}, {"text": "ok", "based_on": 0}, {}])
def test_malformed_label_is_422_and_saves_nothing(site, toy_model, body):
    r = site.post(URL + "/labels", json=body, headers=API)
    assert r.status_code == 422 and r.json()["error"].startswith("Invalid request")
    assert versions(toy_model) == []


def test_unknown_neuron_404_bad_unit_422(site):
    assert site.post("/models/toy/layer4/99/labels", json={"text": "x"}, headers=API).status_code == 404
    assert site.post("/models/toy/layer4/x/labels", json={"text": "x"}, headers=API).status_code == 422
    assert site.post("/models/nope/layer4/1/labels", json={"text": "x"}, headers=API).status_code == 404


def test_browser_login_cookie_and_csrf(site, toy_model):
    assert "Editor login" in site.get("/login").text
    bad = site.post("/login", data={"name": "ann", "token": "nope"})
    assert bad.status_code == 401 and "Wrong editor token" in bad.text
    html = site.get(URL).text
    assert 'action="/models/toy/layer4/3/labels"' not in html and "Log in as an editor" in html
    csrf = login(site, name="Ann Editor")
    no_csrf = site.post(URL + "/labels", data={"text": "yellow", "based_on": ""}, follow_redirects=False)
    assert no_csrf.status_code == 403
    forged = site.post(URL + "/labels", data={"text": "yellow", "based_on": "", "csrf_token": "0" * 64},
                       follow_redirects=False)
    assert forged.status_code == 403 and versions(toy_model) == []
    ok = site.post(URL + "/labels", data={"text": "yellow", "based_on": "", "csrf_token": csrf},
                   follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == URL + "#labels"
    assert versions(toy_model) == [(1, "yellow", "Ann Editor")]
    value = site.cookies.get("microscope_editor")
    site.cookies.clear()
    site.cookies.set("microscope_editor", value[:-2] + ("00" if value[-2:] != "00" else "11"))
    tampered = site.post(URL + "/labels", data={"text": "z", "based_on": "1", "csrf_token": csrf},
                         follow_redirects=False)
    assert tampered.status_code == 401


def test_logout_needs_csrf_and_ends_the_session(site):
    csrf = login(site)
    assert site.post("/logout", follow_redirects=False).status_code == 403
    assert site.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert "Log in as an editor" in site.get(URL).text


def test_login_redirect_stays_on_this_site(site):
    r = site.post("/login", data={"name": "ann", "token": "test-token", "next": "//evil.example/x"},
                  follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_automatic_label_is_kept_apart(site, toy_model):
    uid = unit_id(toy_model)
    with toy_model.sessions.begin() as s:
        append_auto_label(s, uid, "yellow / banana", "worker")
        assert append_auto_label(s, uid, "yellow / banana", "worker") is None  # unchanged: no new version
    site.post(URL + "/labels", json={"text": "lemon"}, headers=API)  # first human label: based on nothing
    card = site.get(URL + ".json").json()["sections"]["labels"]
    assert card["human"]["text"] == "lemon" and card["auto"]["text"] == "yellow / banana"
    assert card["auto"]["source"] == "auto" and card["human"]["source"] == "human"
    assert "Suggested: yellow / banana" in site.get(URL).text
    assert versions(toy_model, source="auto") == [(1, "yellow / banana", "worker")]


def test_search_document_follows_the_label(site, toy_model):
    site.post(URL + "/labels", json={"text": "yellow"}, headers=API)
    site.post(URL + "/labels", json={"text": "lemon", "based_on": 1}, headers=API)
    with toy_model.sessions() as s:
        doc = s.get(UnitText, unit_id(toy_model)).document
    assert "lemon" in doc and "yellow" not in doc


def test_label_markup_is_escaped(site):
    site.post(URL + "/labels", json={"text": "<script>alert(1)</script>"}, headers=API)
    html = site.get(URL).text
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def test_editor_pages_stay_out_of_shared_caches(site):
    assert "private" not in site.get(URL).headers.get("cache-control", "")
    login(site)
    assert site.get(URL).headers["cache-control"] == "private, no-cache"
