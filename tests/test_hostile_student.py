"""A class server no student can take over, fill or slow down (the hostile-student review of the class server).

Real files, real processes and a real server (``streamlit run app.py``) spoken to over HTTP; what only a browser
shows is in test_browser.py. Each finding of the review has its test here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.cookiejar
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT, cli, open_app, python_env, scaled, serve, serve_app_from, tiny_config, wait_for
from fake_runs import fake_run, row
from PIL import Image

from effnet.analysis import results
from effnet.base import access, files, signin
from effnet.base.access import Caller
from effnet.compression import compressions
from effnet.data import folder
from effnet.data.cifar import DataError
from effnet.experiments import bundle, study
from effnet.queue import jobs
from effnet.training import runs

# Trains models, starts processes or servers: the full suite's, not the edit loop's (-m 'not slow').
pytestmark = pytest.mark.slow

STUDENT_A, STUDENT_B, TEACHER = Caller("a" * 32), Caller("b" * 32), Caller("c" * 32, teacher=True)
PASSWORD = "s3cret"


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), colour, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def class_zip(classes: dict[str, int], junk: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (name, count) in enumerate(classes.items()):
            for k in range(count):
                zf.writestr(f"{name}/{k}.png", png((40 * i % 255, 80, 120)))
        for name, data in (junk or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


# ----------------------------------------------------------------------------- 1. identity is a signed cookie
class Browser:
    """A cookie-keeping HTTP client: one browser, as the server sees it."""

    def __init__(self, url: str) -> None:
        self.url, self.jar = url, http.cookiejar.CookieJar()
        no_redirect = type("NoRedirect", (urllib.request.HTTPRedirectHandler,),
                           {"redirect_request": lambda *a, **k: None})
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), no_redirect)

    def request(self, path: str, form: dict[str, str] | None = None) -> tuple[int, dict, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(urllib.request.Request(self.url + path, data=data), timeout=scaled(30)) as r:
                return r.status, dict(r.headers), r.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode(errors="replace")

    def cookie(self, name: str) -> http.cookiejar.Cookie | None:
        return next((c for c in self.jar if c.name == name), None)


@pytest.fixture(scope="module")
def class_server(tmp_path_factory, cifar_dir):
    root = tmp_path_factory.mktemp("class") / "checkpoints"
    root.mkdir()
    yield from ((url, root) for url in serve(root, cifar_dir, tmp_path_factory.mktemp("class-logs"),
                                             EFFNET_TEACHER_PASSWORD=PASSWORD))


def test_every_browser_gets_a_signed_httponly_owner_cookie_and_a_forged_one_is_replaced(class_server):
    url, root = class_server
    status, headers, _ = (browser := Browser(url)).request("/")
    assert status == 200 and "HttpOnly" in headers["set-cookie"] and "owner=" not in headers.get("location", "")
    token = access.owner_from_cookie(browser.cookie(access.OWNER_COOKIE).value, access.server_secret(root))
    assert access.valid_owner_token(token)
    forged = Browser(url)
    forged.jar.set_cookie(http.cookiejar.Cookie(0, access.OWNER_COOKIE, f"{'b' * 32}.not-our-signature", None, False,
                                                "127.0.0.1", True, False, "/", True, False, None, False, None, None, {}))
    forged.request("/")
    assert not forged.cookie(access.OWNER_COOKIE).value.startswith("b" * 32)  # a token one picks is not accepted


def test_the_teacher_signs_in_with_an_expiring_cookie_that_only_the_password_makes(class_server):
    url, _ = class_server
    teacher = Browser(url)
    teacher.request("/")
    status, headers, _ = teacher.request("/effnet/teacher", {"password": PASSWORD})
    assert status == 303 and "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
    cookie = teacher.cookie(access.TEACHER_COOKIE)
    assert cookie is not None and 3.9 * 3600 < cookie.expires - time.time() <= 4 * 3600
    assert "signed in as the teacher" in teacher.request("/effnet/teacher")[2]
    assert "Sign in as the teacher" in Browser(url).request("/effnet/teacher")[2]  # another browser is not


def test_signing_in_and_out_return_to_the_page_you_came_from_and_never_elsewhere(class_server):
    """After signing in the teacher landed on the Lesson, not on the page where they clicked "Sign in"."""
    url, _ = class_server
    teacher = Browser(url)
    teacher.request("/")
    assert 'name="next" value="/train"' in teacher.request("/effnet/teacher?next=/train")[2]
    for given, back in (("/train", "/train"), ("https://elsewhere.example/", "/"), ("//elsewhere.example", "/")):
        status, headers, _ = Browser(url).request("/effnet/teacher", {"password": PASSWORD, "next": given})
        assert status == 303 and headers["location"] == back, (given, headers)
    assert teacher.request("/effnet/teacher", {"password": PASSWORD, "next": "/results"})[0] == 303
    assert 'name="next" value="/results"' in teacher.request("/effnet/signout?next=/results")[2]
    status, headers, _ = teacher.request("/effnet/signout", {"next": "/results"})
    assert status == 303 and headers["location"] == "/results"


def test_signing_out_is_a_post_that_ends_every_copy_of_the_cookie(class_server):
    url, _ = class_server
    teacher, copy = Browser(url), Browser(url)
    teacher.request("/")
    assert teacher.request("/effnet/teacher", {"password": PASSWORD})[0] == 303
    copy.jar.set_cookie(teacher.cookie(access.TEACHER_COOKIE))  # a copied cookie (a shared machine, a screenshot)
    assert "signed in as the teacher" in copy.request("/effnet/teacher")[2]
    # An outside link (a GET) only shows the button: the teacher stays signed in.
    status, _, page = teacher.request("/effnet/signout")
    assert status == 200 and 'method="post"' in page and "signed in as the teacher" in teacher.request(
        "/effnet/teacher")[2]
    assert teacher.request("/effnet/signout", {})[0] == 303
    assert teacher.cookie(access.TEACHER_COOKIE) is None
    assert "Sign in as the teacher" in copy.request("/effnet/teacher")[2]  # the copy ended on the server too


def test_wrong_passwords_slow_down_and_parallel_guesses_cannot_outrun_the_count(tmp_path, cifar_dir):
    root = tmp_path / "checkpoints"
    root.mkdir()
    for url in serve(root, cifar_dir, tmp_path, EFFNET_TEACHER_PASSWORD=PASSWORD):
        guesser = Browser(url)
        codes = [guesser.request("/effnet/teacher", {"password": f"guess{i}"})[0] for i in range(4)]
        assert codes[:3] == [401, 401, 401] and codes[3] == 429, codes  # the fourth try waits
        status, _, page = guesser.request("/effnet/teacher", {"password": PASSWORD})
        assert status == 429 and "wait" in page  # even the right password, until the wait is over
        assert guesser.cookie(access.TEACHER_COOKIE) is None
        # 120 guesses at once, each from a fresh browser, the right password in the middle of them: only the
        # address's few free tries are compared at all, so the right one is refused with the rest.
        signin.Guesses(root).reset()
        browsers = [Browser(url) for _ in range(120)]
        words = [PASSWORD if i == 60 else f"guess{i}" for i in range(len(browsers))]
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(lambda bw: bw[0].request("/effnet/teacher", {"password": bw[1]})[0],
                                  zip(browsers, words, strict=True)))
        assert set(codes) == {401, 429} and codes.count(401) <= signin.FREE["address"], codes
        assert not any(b.cookie(access.TEACHER_COOKIE) for b in browsers)
        # The operator lets a waiting teacher in at once from the console.
        done = cli("effnet.housekeeping", "--root", str(root), "--reset-sign-in")
        assert done.returncode == 0 and "forgotten" in done.stdout
        assert guesser.request("/effnet/teacher", {"password": PASSWORD})[0] == 303


def test_guesses_wait_at_most_a_minute_and_fresh_cookies_cannot_grow_the_count(tmp_path):
    guesses = signin.Guesses(tmp_path)
    keys = guesses.keys("10.0.0.1", "a" * 32)
    now = 1e9
    for _ in range(200):  # a student behind the class's proxy, guessing all lesson long
        while (wait := guesses.begin(keys, now=now)) > 0:
            now += wait
    assert 0 < guesses.wait_s(keys, now=now) <= signin.MAX_WAIT_S  # a wait, never a lockout
    assert guesses.begin(guesses.keys("10.0.0.1", "b" * 32), now=now + signin.MAX_WAIT_S) == 0  # the teacher
    for i in range(2500):  # a fresh cookie and address per try, one a minute for 42 hours: only the last hour stays
        guesses.begin(guesses.keys(f"10.1.{i // 250}.{i % 250}", f"{i:032x}"), now=now + 3600 * 2 + i * 60)
    assert len(json.loads((tmp_path / signin.GUESSES).read_text())) <= 2 * 61 + 1


def test_a_link_with_a_number_no_box_can_hold_is_sent_on_without_it(class_server):
    """/train?t_epochs=1e400 raised OverflowError in the Train page for whoever followed the link."""
    url, _ = class_server
    status, headers, _ = Browser(url).request("/train?t_epochs=1e400&t_lr=0.1&t_seed=nan")
    assert status == 303 and headers["location"] == "/train?t_lr=0.1"
    assert Browser(url).request("/train?t_lr=0.1&t_variants=B0")[0] == 200  # usable addresses load as they are


def _as_owner(url: str, root: Path, owner: str) -> Browser:
    browser = Browser(url)
    value = access.sign_owner(owner, access.server_secret(root))
    browser.jar.set_cookie(http.cookiejar.Cookie(0, access.OWNER_COOKIE, value, None, False, "127.0.0.1", True, False,
                                                 "/", True, False, None, False, None, None, {}))
    return browser


def test_bundle_downloads_are_built_once_and_resumable_ones_are_the_owners(class_server):
    """40 anonymous resumable downloads of one run made 40 full temporary copies (945 MB for a 24 MB run)."""
    url, root = class_server
    fake_run(root, "shared-dl", [row(1, 50.0, 50.0)], weights=True, job={"owner": STUDENT_A.owner, "label": "A's"})
    path = "/effnet/download/bundle/run/shared-dl"
    assert Browser(url).request(path + "?resumable=1")[0] == 403  # no cookie: not the owner
    assert _as_owner(url, root, STUDENT_B.owner).request(path + "?resumable=1")[0] == 403
    assert _as_owner(url, root, STUDENT_A.owner).request(path + "?resumable=1")[0] == 200
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        got = list(pool.map(lambda _: Browser(url).request(path), range(20)))
    assert {status for status, _, _ in got} == {200} and len({body for _, _, body in got}) == 1
    # Built once (this run has no last.pt, so its resumable bundle is the same file) and shared by all 21 requests.
    assert len([p for p in (root / bundle.CACHE).iterdir() if p.suffix == ".zip"]) == 1


def test_downloads_stream_from_disk_and_refuse_paths_outside_the_runs(class_server):
    url, root = class_server
    run_dir = fake_run(root, "dl", [row(1, 50.0, 50.0)], weights=True)
    big = run_dir / runs.LAST
    with open(big, "wb") as f:
        f.truncate(64 * 1024**2)
    browser = Browser(url)
    status, headers, _ = browser.request(f"/effnet/download/run/dl/{runs.BEST}")
    assert status == 200 and headers["content-disposition"].startswith("attachment")
    with urllib.request.urlopen(f"{url}/effnet/download/run/dl/{runs.LAST}", timeout=scaled(60)) as r:
        assert sum(len(chunk) for chunk in iter(lambda: r.read(1 << 20), b"")) == 64 * 1024**2
    (root / "leak").symlink_to("/etc")
    for path in ("/effnet/download/run/leak/passwd", "/effnet/download/run/dl/config.json",
                 "/effnet/download/run/..%2F..%2Fetc/passwd", "/effnet/download/run/dl/compressed/x/../../best.pt"):
        assert browser.request(path)[0] in (400, 404), path  # refused (by the route, or by Streamlit before it)


# ----------------------------------------------------------------------------- 1. tokens never travel
def test_a_bundle_carries_no_owner_and_the_importer_owns_what_it_imports(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    fake_run(here, "mine", [row(1, 50.0, 50.0)], job={"owner": STUDENT_A.owner, "label": "B0 of A"})
    out = bundle.export(here / "mine", tmp_path / "b.zip")
    with zipfile.ZipFile(out) as zf:
        assert STUDENT_A.owner not in zf.read("runs/mine/job.json").decode()
    done = bundle.import_bundle(out, there, STUDENT_B)
    info = runs.read_run(done.runs[0])
    assert info.owner == STUDENT_B.owner and info.label == "B0 of A · imported"


def test_a_run_can_never_be_named_like_the_labs_own_folders(tmp_path):
    """An imported run called "studies" held every study made after it; deleting it deleted them all."""
    here, there = tmp_path / "here", tmp_path / "there"
    fake_run(here, "studies", [row(1, 50.0, 50.0)], job={"owner": STUDENT_A.owner, "label": "trap"})
    out = bundle.export(here / "studies", tmp_path / "trap.zip")
    imported = bundle.import_bundle(out, there, STUDENT_A).runs[0]
    assert imported.name != study.STUDIES and imported.name.startswith("studies-")
    made = study.new_study_dir(there, "methods")
    made.mkdir(parents=True)
    files.write_json(made / study.STUDY, {"kind": "methods", "runs": []})
    jobs.delete(imported.name, there, caller=STUDENT_A)
    assert (made / study.STUDY).is_file()
    with pytest.raises(ValueError, match="not a run id"):
        runs.run_path(there, study.STUDIES)
    assert study.STUDIES not in [r.run_id for r in runs.list_runs(there)]
    bad = cli("effnet.train", "--variant", "b0", "--out", str(there / study.STUDIES), "--epochs", "1")
    assert bad.returncode == 2 and "the lab itself uses" in bad.stderr


def _tampered(good: Path, out: Path, member: str, change) -> Path:
    """``good`` with one member's JSON changed by ``change`` (a crafted bundle, as a student would make one)."""
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(member):
                data = change(data)
            zout.writestr(info.filename, data)
    return out


def _json_change(**fields):
    return lambda data: json.dumps({**json.loads(data), **fields}).encode()


def _study_change(change):
    """A change to the study a bundle carries (inside its bundle.json)."""
    return lambda data: json.dumps({**(m := json.loads(data)), "study": change(m["study"])}).encode()


CRAFTED = {  # bundles that imported fine, then broke a page for everybody
    "metrics-without-numbers": ("run", runs.METRICS, lambda data: b'{"epoch": 1}\n', "train_loss"),
    "zero-epochs": ("run", runs.STATUS, _json_change(state="stopped", epochs=0), "epochs"),
    "far-future-study": ("study", bundle.MANIFEST, _study_change(lambda s: {**s, "created_at": 1e20}), "created_at"),
    "phi-not-a-number": ("study", bundle.MANIFEST, _study_change(lambda s: {**s, "settings": {"phi": "abc"}}), "phi"),
    "methods-row-without-phi": ("study", bundle.MANIFEST, _study_change(
        lambda s: {**s, "runs": [{k: v for k, v in r.items() if k != "phi"} for r in s["runs"]]}), "phi"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_bundle_is_refused_on_import_with_its_reason_and_writes_nothing(tmp_path, case):
    kind, member, change, field = CRAFTED[case]
    here, there = tmp_path / "here", tmp_path / "there"
    fake_run(here, "m1", [row(1, 50.0, 50.0)], job={"label": "B0"})
    source = here / "m1"
    if kind == "study":
        source = study.new_study_dir(here, "methods")
        study.record("methods", [runs.load_config(here / "m1")[1]], ["m1"], [{"method": "compound", "phi": 0.0}],
                     source, here, phi=0.0)
    good = bundle.export(source, tmp_path / "good.zip", here)
    assert bundle.import_bundle(good, tmp_path / "check", STUDENT_A).runs  # the untouched bundle imports
    with pytest.raises(bundle.BundleError, match=field):
        bundle.import_bundle(_tampered(good, tmp_path / "crafted.zip", member, change), there, STUDENT_A)
    assert not there.exists() or not [p for p in there.iterdir() if not p.name.startswith(".")]


def test_a_bundle_declaring_a_huge_classifier_is_refused_before_any_model_is_built(tmp_path):
    """A 3 KB bundle declaring a 360,000-class B7 made the server build a 4.4 GB model before refusing it."""
    here = tmp_path / "here"
    fake_run(here, "m1", [row(1, 50.0, 50.0)], job={"label": "B0"})
    good = bundle.export(here / "m1", tmp_path / "good.zip")

    def huge(data: bytes) -> bytes:
        config = json.loads(data)
        config["spec"] = {**config["spec"], "phi": 7.0, "num_classes": 360_000}
        return json.dumps(config).encode()

    with pytest.raises(bundle.BundleError, match="num_classes"):
        bundle.import_bundle(_tampered(good, tmp_path / "huge.zip", runs.CONFIG, huge), tmp_path / "there", STUDENT_A)


def test_one_cam_rerun_explains_a_bounded_number_of_maps():
    """Score-CAM with the sanity check over every run and 6 images took 88 s of the server in one click."""
    from effnet.analysis.cam import MAX_CAM_MAPS, MAX_SCORECAM_MAPS, cam_budget

    assert cam_budget(30, 6, "scorecam", sanity=True) == (MAX_SCORECAM_MAPS // 2, 1)
    assert cam_budget(30, 6, "gradcam", sanity=False) == (MAX_CAM_MAPS, 1)
    assert cam_budget(4, 6, "gradcam", sanity=False) == (4, 6)  # the usual class demo is untouched
    assert cam_budget(4, 6, "gradcam", sanity=True) == (4, 3)
    for models, images, method, sanity in [(30, 6, "scorecam", True), (9, 6, "gradcam", True), (1, 9, "scorecam", 0)]:
        kept, shown = cam_budget(models, images, method, bool(sanity))
        cap = MAX_SCORECAM_MAPS if method == "scorecam" else MAX_CAM_MAPS
        assert kept * (2 if sanity else 1) * shown <= cap and kept >= 1 and shown >= 1


CLI_REFUSALS = {  # each: one clear line, a non-zero exit, nothing written and no folder made
    "classes-zero": ("train", ["--variant", "b0", "--num-classes", "0", "--out", "{new}"], "num_classes"),
    "device-cpu-7": ("train", ["--variant", "b0", "--device", "cpu:7", "--out", "{new}"], "device"),
    "seed-2-70": ("train", ["--variant", "b0", "--seed", str(2**70), "--out", "{new}"], "seed"),
    "data-dir-typo": ("train", ["--variant", "b0", "--out", "{new}/run", "--data-dir", "{new}/typo"], "CIFAR-100"),
    "compress-nan": ("compress", ["{new}", "--time-budget", "nan", "--out", "{new}/c"], "time_budget"),
    "compress-negative": ("compress", ["{new}", "--time-budget", "-1", "--out", "{new}/c"], "time_budget"),
    "compress-forever": ("compress", ["{new}", "--finetune-epochs", str(10**9), "--prune", "0.3", "--out", "{new}/c"],
                         "finetune_epochs"),
    "runner-on-a-file": ("jobs", ["runner", "--root", "{file}"], "not a folder"),
    "list-nowhere": ("jobs", ["list", "--root", "{new}"], "not a folder"),
    "slurm-watch-nowhere": ("slurm", ["watch", "--root", "{new}"], "not a folder"),
    "export-to-nothing": ("bundle", ["export", "{new}", ""], "file name"),
    "cam-on-a-tpu": ("cam", ["{new}", "{file}", "--device", "tpu", "--out", "{new}/maps"], "device"),
    "cam-on-a-missing-gpu": ("cam", ["{new}", "{file}", "--device", "cuda:9", "--out", "{new}/maps"], "device"),
}


@pytest.mark.parametrize("case", list(CLI_REFUSALS))
def test_bad_command_lines_are_one_clear_line_and_write_nothing(tmp_path, capsys, case):
    import importlib

    command, argv, why = CLI_REFUSALS[case]
    main = {"train": "effnet.train", "compress": "effnet.compression.compress", "jobs": "effnet.queue.jobs",
            "bundle": "effnet.experiments.bundle", "cam": "effnet.analysis.cam", "slurm": "effnet.queue.slurm"}[command]
    (tmp_path / "a-file").write_text("x")
    argv = [a.format(new=tmp_path / "new", file=tmp_path / "a-file") for a in argv]
    try:
        code = importlib.import_module(main).main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code not in (0, None) and why in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_one_bundle_imported_many_times_at_once_lands_whole_and_within_the_quota(tmp_path, monkeypatch):
    """Concurrent imports of one bundle raised a raw OSError and left a half-done import that crashed housekeeping;
    three at once went past the imported-runs quota."""
    monkeypatch.setenv("EFFNET_MAX_IMPORTED", "3")
    here, there = tmp_path / "here", tmp_path / "there"
    fake_run(here, "m1", [row(1, 50.0, 50.0)], job={"label": "B0"})
    good = bundle.export(here / "m1", tmp_path / "good.zip")

    def attempt(_):
        try:
            return bundle.import_bundle(good, there, STUDENT_A).runs[0].name
        except bundle.BundleError as exc:
            return f"refused: {exc}"

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(attempt, range(6)))
    landed = [o for o in outcomes if not o.startswith("refused")]
    assert len(landed) == 3 and len(set(landed)) == 3, outcomes  # the quota, each run under its own name
    assert all("import" in o for o in outcomes if o.startswith("refused")), outcomes
    assert sorted(r.run_id for r in runs.list_runs(there)) == sorted(landed)
    assert not [p for p in there.iterdir() if p.name.startswith(bundle.STAGING) and p.is_dir()]
    assert bundle.recover(there) == []


def test_a_fresh_private_window_gets_no_fresh_quota_where_quotas_count_per_address(tmp_path, cifar_dir, monkeypatch):
    """A new private window was a new owner with fresh quotas. With $EFFNET_QUOTA_PER_ADDRESS=1, every owner that
    loaded a page from one address shares its quotas (each still owns, and alone manages, its own runs)."""
    monkeypatch.setenv("EFFNET_QUOTA_PER_ADDRESS", "1")
    monkeypatch.setenv("EFFNET_MAX_QUEUED", "1")
    root = tmp_path / "checkpoints"
    root.mkdir()
    for url in serve(root, cifar_dir, tmp_path, EFFNET_QUOTA_PER_ADDRESS="1"):
        window, private = Browser(url), Browser(url)
        for browser in (window, private, window):
            assert browser.request("/")[0] == 200
        first, fresh = (b.cookie(access.OWNER_COOKIE).value.split(".")[0] for b in (window, private))
    assert first != fresh  # two owners, as before
    assert access.quota_peers(root, first) == {fresh} and access.quota_peers(root, fresh) == {first}
    assert b"127.0.0.1" not in (root / access.ADDRESSES).read_bytes()  # the book keeps digests, not addresses
    mine = access.caller_of(root, first, teacher=False)
    jobs.submit(tiny_config(cifar_dir), root, caller=mine, start_runner=False)
    with pytest.raises(ValueError, match="other browser windows of your computer"):
        jobs.submit(tiny_config(cifar_dir), root, caller=access.caller_of(root, fresh, teacher=False),
                    start_runner=False)
    assert len(runs.list_runs(root)) == 1
    somewhere_else = "d" * 32
    jobs.submit(tiny_config(cifar_dir), root, caller=access.caller_of(root, somewhere_else, False), start_runner=False)
    monkeypatch.delenv("EFFNET_QUOTA_PER_ADDRESS")  # off (the default): each window is counted alone
    jobs.submit(tiny_config(cifar_dir), root, caller=access.caller_of(root, fresh, teacher=False), start_runner=False)
    assert len(runs.list_runs(root)) == 3


def test_the_address_book_forgets_after_a_day_and_no_flood_of_cookies_pushes_an_owner_out(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNET_QUOTA_PER_ADDRESS", "1")
    student = "a" * 32
    access.remember_address(tmp_path, student, "10.0.0.7", now=1000.0)
    minted = [f"{i:032x}" for i in range(1, 1200)]  # a script loading pages without cookies, each a new owner
    for i, owner in enumerate(minted):
        access.remember_address(tmp_path, owner, "10.0.0.7", now=1001.0 + i / 100)
    assert student in access.quota_peers(tmp_path, minted[-1], now=1100.0)  # still counted with the rest
    assert access.quota_peers(tmp_path, student, now=1100.0) == set(minted)
    assert access.quota_peers(tmp_path, student, now=1000.5 + access.ADDRESS_MEMORY_S) == set()  # a day on: gone
    access.remember_address(tmp_path, "e" * 32, "10.0.0.8", now=1100.0 + access.ADDRESS_MEMORY_S)
    assert len(json.loads((tmp_path / access.ADDRESSES).read_text())) == 1  # yesterday's entries are gone


# ----------------------------------------------------------------------------- 2. datasets within quotas
def test_a_zip_that_would_unpack_past_the_quota_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNET_MAX_DATASET_MB", "5")
    data = tmp_path / "data"
    bomb = class_zip({"cat": 3, "dog": 3}, {f"junk{i}.bin": bytes(1024**2) for i in range(8)})  # 8 MB of zeros
    with pytest.raises(DataError, match="over the"):
        folder.unpack_zip(bomb, data, "bomb", STUDENT_A)
    assert [p.name for p in (data / folder.OWN).iterdir() if not p.name.startswith(".")] == []
    assert not any((data / folder.OWN).glob(".staging-*"))


def parallel_uploads(zipped: bytes, data: Path, n: int = 8) -> list[str]:
    """``n`` uploads of ``zipped`` at once by one student (as datasets set0, set1, ...): each one's dataset name, or
    "refused: why"."""
    def upload(i):
        try:
            return folder.unpack_zip(zipped, data, f"set{i}", STUDENT_A).name
        except DataError as exc:
            return f"refused: {exc}"

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(upload, range(n)))


def test_parallel_uploads_stay_within_the_dataset_quota(tmp_path, monkeypatch):
    """8 uploads at once gave 8 datasets against a limit of 3: every check ran before any dataset was written."""
    monkeypatch.setenv("EFFNET_MAX_DATASETS", "3")
    data = tmp_path / "data"
    zipped = class_zip({"cat": 3, "dog": 3})

    outcomes = parallel_uploads(zipped, data)
    landed = [o for o in outcomes if not o.startswith("refused")]
    assert len(landed) == 3 and all("each student may have 3" in o for o in outcomes if o.startswith("refused")), outcomes
    assert sorted(p.name for p in (data / folder.OWN).iterdir() if not p.name.startswith(".")) == sorted(landed)
    assert not [p for p in (data / folder.OWN).iterdir() if p.name.startswith(".staging-") and p.is_dir()]


def test_parallel_uploads_stay_within_the_disk_budget_counted_when_they_land(tmp_path, monkeypatch):
    """The disk budget was a count remembered for 30 s: 8 uploads at once all passed the one count made before
    any of them landed. The last check, under the lock that moves a dataset in, counts the disk again."""
    noise = np.random.default_rng(0).integers(0, 255, (3, 160, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in ("cat", "dog"):
            for k, img in enumerate(noise):
                out = io.BytesIO()
                Image.fromarray(img).save(out, format="PNG")
                zf.writestr(f"{name}/{k}.png", out.getvalue())
    zipped = buf.getvalue()
    size = sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(zipped)).infolist())  # about 460 KB unpacked
    monkeypatch.setenv("EFFNET_MAX_DATASETS", "8")
    monkeypatch.setenv("EFFNET_DISK_BUDGET_GB", str(2.5 * size / 1024**3))  # room for two
    data = tmp_path / "data"
    (data / folder.OWN).mkdir(parents=True)
    access.forget_usage()
    assert access.folder_bytes(data) == 0  # remembered: an empty folder

    outcomes = parallel_uploads(zipped, data)
    landed = [o for o in outcomes if not o.startswith("refused")]
    assert len(landed) == 2 and all("disk budget" in o for o in outcomes if o.startswith("refused")), outcomes
    assert access.folder_bytes(data, fresh=True) < 2.5 * size


def test_a_student_has_one_compression_at_work_however_many_runs_they_click(tmp_path):
    """Three runs of one student compressed at once held the CPU three times over (the teacher's run waited);
    the count and the start are under one lock per owner, so parallel clicks start exactly one."""
    root = tmp_path / "checkpoints"
    made = [fake_run(root, f"r{i}", [row(1, 50.0, 50.0)], weights=True, job={"owner": STUDENT_A.owner})
            for i in range(3)]
    fake_run(root, "theirs", [row(1, 50.0, 50.0)], weights=True, job={"owner": STUDENT_B.owner})
    from effnet.base import locks
    from effnet.training.devices import cpu_locks

    def start(run_dir, caller=STUDENT_A):
        try:
            return compressions.start(run_dir, root, True, 0, [], 0, caller=caller)
        except ValueError as exc:
            return f"refused: {exc}"

    with contextlib.ExitStack() as held:
        for path in cpu_locks(root):  # training holds the CPU: the compressions wait, alive
            held.enter_context(locks.exclusive(path))
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            outcomes = list(pool.map(start, made))
        started = [o for o in outcomes if not isinstance(o, str)]
        assert len(started) == 1 and all("compression(s) at work" in o for o in outcomes if isinstance(o, str))
        assert compressions.at_work_of(root, STUDENT_A) == 1
        assert not isinstance(start(root / "theirs", STUDENT_B), str)  # another student's quota is their own
        idle = next(d for d in made if not any(compressions.working(o) for o in compressions.outputs(d)))
        assert not isinstance(start(idle, TEACHER), str)  # the teacher has none
        for run_dir in [*made, root / "theirs"]:
            compressions.stop_all(run_dir)
    assert compressions.at_work_of(root, STUDENT_A) == 0
    assert isinstance(start(made[2]), Path)  # once it is done, the next may start
    compressions.stop_all(made[2])


def test_datasets_count_against_their_owner_list_who_owns_them_and_go_away_on_delete(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNET_MAX_DATASETS", "1")
    data = tmp_path / "data"
    added = folder.unpack_zip(class_zip({"cat": 3, "dog": 4}, {"cat/notes.txt": b"text"}), data, "pets", STUDENT_A)
    assert added.owner == STUDENT_A.owner and added.counts == {"cat": 3, "dog": 4} and added.skipped == 1
    assert not (added.folder / "cat" / "notes.txt").exists()  # junk is not kept on the server's disk
    with pytest.raises(DataError, match="each student may have 1"):
        folder.unpack_zip(class_zip({"a": 2, "b": 2}), data, "more", STUDENT_A)
    with pytest.raises(DataError, match="at least 2 readable images"):
        folder.unpack_zip(class_zip({"a": 1, "b": 2}), data, "thin", STUDENT_B)  # refused at upload, not at training
    with pytest.raises(PermissionError):
        folder.delete_dataset(data, "pets", STUDENT_B)
    folder.delete_dataset(data, "pets", TEACHER)
    assert folder.own_datasets(data) == []


def test_a_half_unpacked_dataset_is_invisible_and_a_crashed_one_is_removed(tmp_path, monkeypatch, cifar_dir):
    data = tmp_path / "data"
    staging = data / folder.OWN / ".staging-0123456789ab"
    (staging / "only-one-class").mkdir(parents=True)
    (staging / "only-one-class" / "0.png").write_bytes(png((1, 2, 3)))
    assert folder.own_datasets(data) == []
    from effnet.base import locks

    busy = data / folder.OWN / ".staging-ba9876543210"
    busy.mkdir()
    with locks.exclusive(data / folder.OWN / f"{busy.name}.lock"):  # an upload at work: left alone
        serve_app_from(monkeypatch, tmp_path / "checkpoints", data)
        at = open_app("views/train.py")
        assert not at.exception and busy.exists()
    assert not staging.exists()  # no process held its lock: a crash left it, and the page's next look removed it
    assert folder.tidy(data) and not busy.exists()


# ----------------------------------------------------------------------------- 3. imports within quotas, bulk delete
def many_runs_bundle(tmp_path: Path, n: int) -> Path:
    """A grid study of ``n`` tiny runs as one bundle."""
    src = tmp_path / "src"
    for i in range(n):
        fake_run(src, f"r{i:03d}", [row(1, 50.0, 50.0)], weights=True)
    (src / "studies" / "s").mkdir(parents=True)
    files.write_json(src / "studies" / "s" / "study.json", {"kind": "grid", "runs": [
        {"run": f"../../r{i:03d}", "macs": 1, "params": 1, "alpha": 1.0, "beta": 1.0, "gamma": 1.0} for i in range(n)]})
    return bundle.export(src / "studies" / "s", tmp_path / "many.zip", src)


def test_imports_count_against_a_students_quota_and_the_teacher_deletes_an_import_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNET_MAX_IMPORTED", "5")
    zipped = many_runs_bundle(tmp_path, 12)
    root = tmp_path / "checkpoints"
    with pytest.raises(bundle.BundleError, match="each student may import 5"):
        bundle.import_bundle(zipped, root, STUDENT_A)
    assert not root.exists() or runs.list_runs(root) == []
    done = bundle.import_bundle(zipped, root, TEACHER)
    batch = {(r.job or {}).get("imported") for r in runs.list_runs(root)}
    assert len(batch) == 1 and len(done.runs) == 12
    with pytest.raises(PermissionError):
        jobs.delete_many([p.name for p in done.runs], root, caller=STUDENT_A)
    assert jobs.delete_many([p.name for p in done.runs], root, caller=TEACHER) == []
    assert runs.list_runs(root) == []


def test_listing_again_reads_only_what_changed(tmp_path):
    from test_honest_numbers import bytes_read

    for i in range(300):
        fake_run(tmp_path, f"r{i:03d}", [row(1, 50.0, 50.0)])
    first, read_first = bytes_read(lambda: runs.list_runs(tmp_path))
    again, read_again = bytes_read(lambda: runs.list_runs(tmp_path))
    assert len(first) == len(again) == 300 and read_again < read_first / 50, (read_first, read_again)
    files.write_json(tmp_path / "r007" / runs.LABEL, {"label": "renamed"})
    assert {r.run_id: r.label for r in runs.list_runs(tmp_path)}["r007"] == "renamed"


def test_a_killed_import_is_finished_or_removed_never_left_half_done(tmp_path):
    zipped = many_runs_bundle(tmp_path, 40)
    root = tmp_path / "checkpoints"
    root.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "effnet.bundle", "import", str(zipped), "--checkpoints", str(root)],
                            cwd=PROJECT, env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any(root.glob(".import-*/r0*")) or proc.poll() is not None, timeout=120, what="the staging")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    bundle.recover(root)
    imported = runs.list_runs(root)
    assert not any(root.glob(".import-*")) and len(imported) in (0, 40), len(imported)
    studies = list((root / "studies").glob("*/study.json")) if (root / "studies").is_dir() else []
    assert (len(imported), len(studies)) in ((0, 0), (40, 1))


# ----------------------------------------------------------------------------- 4. bounded work per request
def test_the_cam_page_explains_a_few_test_images_per_rerun(monkeypatch, tmp_path, cifar_dir):
    fake_run(tmp_path, "r", [row(1, 50.0, 50.0)], weights=True)
    serve_app_from(monkeypatch, tmp_path, cifar_dir)
    at = open_app("views/cam.py")
    at.text_input(key="cam_cifar").set_value(", ".join(["0"] * 30)).run()
    from effnet.analysis.cam import MAX_CAM_IMAGES

    originals = [i for i in at.get("image") for img in i.proto.imgs if img.caption.startswith("original")]
    assert len(originals) == MAX_CAM_IMAGES and not at.exception


# ----------------------------------------------------------------------------- 5-6. text is text
def test_labels_are_cleaned_on_every_path_in(tmp_path):
    run_id = jobs.submit(tiny_config(tmp_path / "data"), tmp_path / "checkpoints", start_runner=False,
                         label="fine\u202e name")
    assert runs.read_run(tmp_path / "checkpoints" / run_id).label == "fine name"  # the override is gone
    with pytest.raises(ValueError, match="1 to 80"):
        jobs.rename(run_id, "x" * 81, tmp_path / "checkpoints")
    long = fake_run(tmp_path / "elsewhere", "long", [row(1, 50.0, 50.0)], job={"label": "ok"})
    raw = files.load_json(long / runs.JOB)
    files.write_json(long / runs.JOB, raw | {"label": "x" * 100_000})
    assert runs.read_run(long).damaged  # a 100 kB label is refused, not rendered every 2 s


def test_csv_cells_that_look_like_formulas_are_escaped():
    columns = ['=HYPERLINK("http://x","click")', "@SUM(1+1)", "B0"]
    text = results.to_csv(columns, [{"": "-2+3", **dict.fromkeys(columns, 1.5)}])
    header, line = text.splitlines()
    assert header.startswith(",\"'=HYPERLINK") and ",'@SUM(1+1),B0" in header and line.startswith("'-2+3,1.5")


def test_the_tables_own_csv_download_gets_the_same_escaping(tmp_path, monkeypatch):
    """The table toolbar's "Download as CSV" writes cells as shown: a label =HYPERLINK(...) came out bare."""
    root = tmp_path / "checkpoints"
    fake_run(root, "formula", [row(1, 50.0, 50.0)], job={"label": '=HYPERLINK("http://x","click")'})
    fake_run(root, "plain", [row(1, 40.0, 41.0)], job={"label": "B0 plain"})
    serve_app_from(monkeypatch, root, tmp_path / "data")
    at = open_app("views/results.py")
    assert not at.exception
    shown = [str(c) for frame in at.dataframe for c in frame.value.columns]
    assert "'=HYPERLINK(\"http://x\",\"click\")" in shown and "B0 plain" in shown
    assert not [c for c in shown if c.startswith("=")]


# ----------------------------------------------------------------------------- 8. half-written state
def test_a_compression_whose_process_died_is_failed_at_once_and_can_be_deleted(tmp_path):
    run_dir = fake_run(tmp_path, "r", [row(1, 50.0, 50.0)], weights=True, job={"owner": STUDENT_A.owner})
    out = run_dir / compressions.FOLDER / "20261201-120000"
    out.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    files.write_json(out / runs.STATUS, {"state": "running", "pid": dead.pid, "heartbeat": time.time()})
    assert not compressions.working(out) and compressions.tidy(run_dir)
    assert (files.read_json(out / runs.STATUS) or {})["state"] == "failed"
    with pytest.raises(PermissionError):
        compressions.delete_output(run_dir, out.name, STUDENT_B)
    compressions.delete_output(run_dir, out.name, STUDENT_A)
    assert compressions.outputs(run_dir) == []


def test_deleting_a_run_stops_its_compression_and_nothing_comes_back(tmp_path, monkeypatch):
    run_dir = fake_run(tmp_path, "r", [row(1, 50.0, 50.0)], weights=True, job={"owner": STUDENT_A.owner})
    out = run_dir / compressions.FOLDER / "20261201-120000"
    out.mkdir(parents=True)
    from effnet.base import locks

    device = tmp_path / ".device-cpu.lock"
    with locks.exclusive(device):  # a training run holds the CPU: the compression waits for it, alive
        worker = subprocess.Popen([sys.executable, "-m", "effnet.compress", str(run_dir), "--out", str(out), "--int8"],
                                  cwd=PROJECT, env=python_env(EFFNET_DEVICE_LOCK=str(device)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: (files.read_json(out / runs.STATUS) or {}).get("state") == "waiting", timeout=120,
                 what="the compression to wait for the CPU")
        jobs.delete("r", tmp_path, caller=STUDENT_A)
        assert worker.wait(timeout=scaled(60)) != 0  # stopped first
    time.sleep(1)
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- 9. big honest inputs
def uploads_held(url: str) -> int:
    """Bytes of uploads the server holds in memory, as its own metrics route reports them."""
    import re

    with urllib.request.urlopen(url + "/_stcore/metrics", timeout=scaled(30)) as r:
        text = r.read().decode()
    found = re.findall(r'cache_memory_bytes\{[^}]*cache_type="UploadedFileManager"[^}]*\} (\d+)', text)
    return sum(int(n) for n in found)


def test_uploads_attached_to_no_widget_are_freed_with_their_session(tmp_path, cifar_dir):
    """Sent straight to the upload route and picked in no widget, 5 x 300 MB stayed in the server's memory 20
    minutes after the tab was closed. Here 3 x 5 MB, and a 2 s reconnect grace instead of Streamlit's 120 s."""
    import asyncio

    sys.path.insert(0, str(PROJECT / "bench"))
    from classroom_load import Session, put_file
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    root = tmp_path / "checkpoints"
    root.mkdir()
    for url in serve(root, cifar_dir, tmp_path, STREAMLIT_SERVER_DISCONNECTED_SESSION_TTL="2"):
        with urllib.request.urlopen(url + "/_stcore/health", timeout=scaled(30)) as r:
            xsrf = next(h.split(";")[0].split("=", 1)[1] for h in r.headers.get_all("Set-Cookie")
                        if h.startswith("_streamlit_xsrf="))

        async def upload_then_leave(url: str, xsrf: str, stay_s: float) -> None:
            tab = Session(url)
            await tab.connect()
            await tab.rerun()
            ask = BackMsg()
            ask.file_urls_request.request_id = "r1"
            ask.file_urls_request.file_names.extend(["a.bin", "b.bin", "c.bin"])
            ask.file_urls_request.session_id = tab.session_id
            await tab.ws.send(ask.SerializeToString())
            while True:
                answer = ForwardMsg()
                answer.ParseFromString(await asyncio.wait_for(tab.ws.recv(), scaled(60)))
                if answer.WhichOneof("type") == "file_urls_response":
                    break
            for urls in answer.file_urls_response.file_urls:
                await asyncio.to_thread(put_file, url + urls.upload_url, bytes(5 * 1024**2), xsrf)
            assert uploads_held(url) >= 15 * 1024**2  # held while the tab is open
            await asyncio.sleep(stay_s)
            assert uploads_held(url) >= 15 * 1024**2  # and kept for an open tab, however long
            await tab.close()

        asyncio.run(upload_then_leave(url, xsrf, stay_s=5))
        wait_for(lambda url=url: uploads_held(url) == 0, timeout=30, what="the closed tab's uploads to be freed")


def test_a_huge_metrics_file_is_refused_without_being_parsed(tmp_path):
    run_dir = fake_run(tmp_path, "r", [row(1, 50.0, 50.0)])
    line = json.dumps(row(1, 50.0, 50.0)) + "\n"
    (run_dir / runs.METRICS).write_text(line * 54_155)
    info = runs.read_run(run_dir)
    assert not info.damaged
    with pytest.raises(files.Damaged, match="more than such a file may have"):
        runs.load_metrics(run_dir)


def test_an_uploaded_dataset_is_counted_once(tmp_path):
    data = tmp_path / "data"
    added = folder.unpack_zip(class_zip({"a": 30, "b": 30}), data, "counted", STUDENT_A)
    for png_file in list(added.folder.rglob("*.png"))[:10]:
        png_file.unlink()  # the listing is not walked again: the counts made at upload stand
    assert folder.split_sizes(added.folder) == added.split == (48, 12)


# ----------------------------------------------------------------------------- 10. command-line edges
@pytest.mark.parametrize("args, message", [
    (["effnet.train", "--phi", "-4", "--out", ""], "out: give the run's folder"),
    (["effnet.train", "--phi", "-4", "--out", "README.md"], "is a file, not a run folder"),
    (["effnet.train", "--phi", "-4", "--weight-decay", "inf", "--out", "{tmp}/wd"], "weight_decay"),
    (["effnet.train", "--phi", "-4", "--init-from", "/nonexistent", "--out", "{tmp}/x"], "not a run folder"),
    (["effnet.train", "--phi", "-4", "--val-size", "64", "--data-dir", "{cifar}", "--out", "README.md/x"],
     "cannot write"),
    (["effnet.train", "--phi", "-4", "--data-dir", "{tmp}/none", "--out", "/proc/nope/x"], "error: disk"),
    (["effnet", "card", "b0", "--batch-size", "-5"], "batch-size"),
    (["effnet.jobs", "list", "--root", "/nonexistent"], "--root"),
    (["effnet.compress", "{tmp}/none", "--threads", "-1", "--out", "{tmp}/c"], "threads"),
    (["effnet.compress", "{tmp}/none", "--int8", "--out", ""], "out: give the folder"),
    (["effnet.compress", "{tmp}/none", "--int8", "--out", "{tmp}/c"], "not a readable run folder"),
])
def test_refused_commands_say_why_in_one_line_and_write_nothing(tmp_path, cifar_dir, args, message):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{cifar}", str(cifar_dir)) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    done = cli(*args, "--device", "cpu") if args[0] == "effnet.train" else cli(*args)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert not Path(os.getcwd(), "wd").exists()


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched(tmp_path):
    """A run's status lock lives in the run folder: a student who plants it as a link to another file must not
    have the lab create, append to or lock that file."""
    from effnet.base import locks
    from effnet.training import runs

    target = tmp_path / "teachers-file.txt"
    target.write_text("keep me")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.STATUS_LOCK).symlink_to(target)
    with pytest.raises(OSError), locks.exclusive(run_dir / runs.STATUS_LOCK):
        pass
    assert target.read_text() == "keep me"
