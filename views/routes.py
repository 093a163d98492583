"""The lab's own HTTP routes beside Streamlit's (served by ``app.py``): identity, the teacher's sign-in, downloads.

Streamlit pages cannot set cookies or stream a file from disk, and both matter on a class server:

- ``OwnerCookie`` gives every browser a signed, HttpOnly owner cookie on its first page load. The pages read
  it (``st.context.cookies``); nothing identifying ever appears in the address bar, a link or a screenshot. With
  per-address quotas it notes the address each owner loads pages from (``access.remember_address``).
- ``/effnet/teacher`` is the sign-in page (a plain form; every try is counted before it is checked, per browser,
  address and server, ``effnet.base.signin``); it sets the signed teacher cookie. ``/effnet/signout`` shows a
  button; only its POST (from this server's page) signs out, ending the cookie on the server too, so an outside
  link cannot sign the teacher out and a copied cookie dies with the sign-out.
- ``UsableQuery`` sends a page address holding a number no box can hold (``?t_epochs=1e400``, ``nan``) on to the
  same address without it: Streamlit seeds the form's boxes from the address and raised on those, breaking the page
  for whoever followed a shared link.
- ``/effnet/download/...`` streams a run's checkpoint, a compressed model or a bundle from disk in chunks
  (Streamlit's download button would hold the whole file in the server's memory for every browser that
  shows it). The path is checked like every run id: a direct child of the checkpoints folder, no links.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import math
import re
import urllib.parse
from pathlib import Path

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from effnet.base import access, signin
from effnet.base.files import Damaged
from effnet.compression.compressions import FOLDER as COMPRESSED
from effnet.experiments import bundle, study
from effnet.training import runs

PREFIX = "/effnet"
_STREAMLIT_PATHS = ("/_stcore/", "/static/", "/media/", "/component/", PREFIX + "/")


def _root() -> Path:
    return runs.checkpoints_dir().resolve()


def _key() -> bytes:
    return access.server_secret(_root())


def _password() -> str | None:
    from views.widgets import secret

    return access.teacher_password(secret("teacher_password"))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


async def _remember(owner: str, address: str | None) -> None:
    """Per-address quotas: this window is this computer's (``access.remember_address``), noted off the event loop
    (a file read, and at most hourly a write); a disk that refuses it costs the page nothing."""
    if access.per_address():
        with contextlib.suppress(OSError):
            await asyncio.to_thread(access.remember_address, _root(), owner, address)


class OwnerCookie:
    """ASGI middleware: a page load without a valid owner cookie gets a new one (signed, HttpOnly, a year)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_STREAMLIT_PATHS):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        address = request.client.host if request.client else None
        owner = access.owner_from_cookie(request.cookies.get(access.OWNER_COOKIE), _key())
        if owner is not None:
            await _remember(owner, address)
            await self.app(scope, receive, send)
            return
        owner = access.new_owner_token()
        await _remember(owner, address)
        value = access.sign_owner(owner, _key())
        cookie = (f"{access.OWNER_COOKIE}={value}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
                  + ("; Secure" if _secure(request) else ""))

        async def with_cookie(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, with_cookie)


def _usable(value: str) -> bool:
    """Not a number, or a finite one of a size a number box can hold."""
    try:
        number = float(value)
    except ValueError:
        return True
    return math.isfinite(number) and abs(number) < 1e15


class UsableQuery:
    """ASGI middleware: a page load whose address holds an unusable number is redirected to the address without it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_STREAMLIT_PATHS) or not scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        pairs = urllib.parse.parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        kept = [(k, v) for k, v in pairs if _usable(v)]
        if len(kept) == len(pairs):
            await self.app(scope, receive, send)
            return
        target = scope["path"] + ("?" + urllib.parse.urlencode(kept) if kept else "")
        await RedirectResponse(target, status_code=303)(scope, receive, send)


# ----------------------------------------------------------------------------- the teacher's sign-in
PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>effnet-lab: teacher sign-in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;font-size:22px;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}}
input,button{{font-size:22px;padding:.4rem .8rem}} .err{{color:#b00020;font-weight:600}} a{{color:#0072B2}}</style>
</head><body><h1>Teacher sign-in</h1>{body}<p><a href="/">Back to the lab</a></p></body></html>"""
FORM = """<form method="post" action="{prefix}/teacher"><p><label>Teacher password<br>
<input type="password" name="password" autofocus autocomplete="current-password"></label></p>
<input type="hidden" name="next" value="{next}">
<p><button type="submit">Sign in as the teacher</button></p></form>"""
SIGN_OUT = """<form method="post" action="{prefix}/signout"><input type="hidden" name="next" value="{next}">
<p><button type="submit">Sign out</button></p></form>"""


def _back(value: object) -> str:
    """Where signing in or out returns: one of the lab's page paths (``/train``), never another site ("/" else)."""
    return value if isinstance(value, str) and re.fullmatch(r"/[a-z0-9_-]{0,40}", value) else "/"


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(body=body), status_code=status, headers={"Cache-Control": "no-store"})


def _same_origin(request: Request) -> bool:
    """A form post from this server's own page (not another site making a browser post to us)."""
    origin = request.headers.get("origin") or request.headers.get("referer") or ""
    host = request.headers.get("host", "")
    return not origin or origin.split("://", 1)[-1].split("/", 1)[0] == host


def _is_teacher(request: Request, password: str | None) -> bool:
    return signin.is_teacher(_root(), request.cookies.get(access.TEACHER_COOKIE), _key(), password)


async def teacher(request: Request) -> Response:
    password = _password()
    if password is None:
        return _page("<p>This server has no teacher password: everybody manages every run already.</p>")
    back = _back(request.query_params.get("next"))
    if _is_teacher(request, password):
        return _page("<p>You are signed in as the teacher.</p>" + SIGN_OUT.format(prefix=PREFIX, next=back))
    if request.method == "GET":
        return _page(FORM.format(prefix=PREFIX, next=back))
    if not _same_origin(request):
        return _page('<p class="err">Refused: the form must be sent from this server\'s page.</p>', 403)
    guesses = signin.Guesses(_root())
    keys = guesses.keys(request.client.host if request.client else None,
                        access.owner_from_cookie(request.cookies.get(access.OWNER_COOKIE), _key()))
    wait = guesses.begin(keys)  # counted before the password is read or compared: parallel tries cannot outrun it
    form = await request.form()
    given, back = form.get("password"), _back(form.get("next"))
    if wait > 0:
        return _page(f'<p class="err">Too many wrong passwords: wait {wait:.0f} s, then try again.</p>'
                     + FORM.format(prefix=PREFIX, next=back), 429)
    if not isinstance(given, str) or not access.is_teacher_password(given, password):
        wait = guesses.wait_s(keys)
        note = f" Wait {wait:.0f} s before the next try." if wait > 0 else ""
        return _page(f'<p class="err">Wrong password.{note}</p>' + FORM.format(prefix=PREFIX, next=back), 401)
    guesses.succeeded(keys)
    response = RedirectResponse(back, status_code=303)
    response.set_cookie(access.TEACHER_COOKIE, access.sign_teacher(_key(), password),
                        max_age=int(3600 * access.teacher_hours()), httponly=True, samesite="strict",
                        secure=_secure(request))
    return response


async def signout(request: Request) -> Response:
    """GET: a page with the sign-out button (a link alone signs nobody out). POST from our page: the cookie ends."""
    password = _password()
    if request.method == "GET":
        body = SIGN_OUT if _is_teacher(request, password) else "<p>You are not signed in as the teacher.</p>"
        return _page(body.format(prefix=PREFIX, next=_back(request.query_params.get("next"))))
    if not _same_origin(request):
        return _page('<p class="err">Refused: the form must be sent from this server\'s page.</p>', 403)
    signin.sign_out(_root(), request.cookies.get(access.TEACHER_COOKIE), _key(), password)
    response = RedirectResponse(_back((await request.form()).get("next")), status_code=303)
    response.delete_cookie(access.TEACHER_COOKIE)
    return response


# ----------------------------------------------------------------------------- downloads, streamed from disk
def _regular(path: Path) -> Path:
    """``path`` when it is a regular file reached without links; ``ValueError`` otherwise."""
    if path.is_symlink() or not path.is_file() or any(p.is_symlink() for p in path.parents if p != Path("/")):
        raise ValueError("not a file here")
    return path


def _file(request: Request) -> Path:
    """The file a download names: a run's checkpoint, or a compressed model in the run's compressed/ folder."""
    run_dir = runs.run_path(_root(), request.path_params["run"])
    parts = request.path_params["file"].split("/")
    if parts in ([runs.BEST], [runs.LAST]):
        return _regular(run_dir / parts[0])
    if len(parts) == 3 and parts[0] == COMPRESSED and runs.RUN_ID.fullmatch(parts[1]) and parts[2].endswith(".onnx") \
            and runs.RUN_ID.fullmatch(parts[2]):
        return _regular(run_dir / parts[0] / parts[1] / parts[2])
    raise ValueError("not a file the lab offers")


def _refused(exc: Exception) -> HTMLResponse:
    return _page(f'<p class="err">Not available: {html.escape(str(exc))}</p>', 404)


async def download(request: Request) -> Response:
    try:
        path = _file(request)
    except ValueError as exc:
        return _refused(exc)
    name = f"{request.path_params['run']}-{path.name}"
    return FileResponse(path, filename=name, media_type="application/octet-stream")


def _caller(request: Request) -> access.Caller:
    """Who sends ``request``: its signed owner cookie and whether it holds a teacher cookie nobody signed out."""
    password = _password()
    owner = access.owner_from_cookie(request.cookies.get(access.OWNER_COOKIE), _key())
    return access.caller_of(_root(), owner, password is None or _is_teacher(request, password))


async def download_bundle(request: Request) -> Response:
    """A run or a study as one zip, built once per version of its files and shared (``bundle.cached_export``).
    A resumable one carries the optimizer state, so only the run's owner or the teacher may have it."""
    kind, name = request.path_params["kind"], request.path_params["name"]
    resumable = request.query_params.get("resumable") == "1"
    try:
        root = _root()
        if kind == "run":
            source = runs.run_path(root, name)
            if resumable:
                access.check(_caller(request), runs.read_run(source), "download a resumable copy of")
        elif kind == "study" and runs.RUN_ID.fullmatch(name):
            source = root / study.STUDIES / name
            if source.is_symlink() or not (source / study.STUDY).is_file():
                raise ValueError("no such study")
            if resumable and not _caller(request).teacher:
                raise PermissionError("a resumable study bundle is the teacher's to download")
        else:
            raise ValueError("not a bundle the lab offers")
        path = bundle.cached_export(source, root, resumable)
    except PermissionError as exc:
        return _page(f'<p class="err">Refused: {html.escape(str(exc))}</p>', 403)
    except (ValueError, bundle.BundleError, Damaged, OSError) as exc:
        return _refused(exc)
    return FileResponse(path, filename=f"{name}.zip", media_type="application/zip")


def download_url(run_id: str, file: str) -> str:
    """Where a page links to download ``file`` of run ``run_id`` (best.pt, last.pt, compressed/<stamp>/<x>.onnx)."""
    return f"{PREFIX}/download/run/{run_id}/{file}"


def bundle_url(kind: str, name: str, resumable: bool = False) -> str:
    """Where a page links to download a run (``kind="run"``) or a study as a bundle (``resumable``: with last.pt)."""
    return f"{PREFIX}/download/bundle/{kind}/{name}" + ("?resumable=1" if resumable else "")


def routes() -> list[Route]:
    return [Route(f"{PREFIX}/teacher", teacher, methods=["GET", "POST"]),
            Route(f"{PREFIX}/signout", signout, methods=["GET", "POST"]),
            Route(f"{PREFIX}/download/run/{{run}}/{{file:path}}", download, methods=["GET"]),
            Route(f"{PREFIX}/download/bundle/{{kind}}/{{name}}", download_bundle, methods=["GET"])]


def middleware() -> list[Middleware]:
    return [Middleware(UsableQuery), Middleware(OwnerCookie)]
