"""A class arrives at once: N sessions against one real ``streamlit run app.py`` on loopback.

Each session speaks Streamlit's own websocket protocol (protobuf BackMsg/ForwardMsg, no browser),
so what is measured is the server alone: it opens the explorer, switches to a custom spec and moves
phi, then opens Results, the path a student takes in the first minute of a class. Then N sessions
each upload a 12-megapixel photo to the CAM page at the same moment.

    python bench/classroom_load.py                      # 1, 10 and 30 sessions, 10 uploads
    python bench/classroom_load.py --sessions 1,10 --uploads 0 --json bench/load.json

Reported per level: p50/p95 seconds from connecting to the explorer's rendered numbers (the
script's end), the same for the whole three-page path, server CPU-seconds per session (from
/proc), errors and disconnects, and the server's peak and settled resident memory. Loopback only;
every wait is bounded. The server gets a fresh checkpoints folder with two tiny finished runs
(trained here on a generated CIFAR-format archive, about 30 s) unless --checkpoints names one.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import websockets
from PIL import Image
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "tests"))  # the generator of CIFAR-format archives the tests use
TIMEOUT_S = 300


# ----------------------------------------------------------------------------- one protocol-level session
@dataclass
class Session:
    """A browser tab, as the server sees it: a websocket, reruns with widget states, the deltas coming back."""

    url: str
    pages: dict[str, str] = field(default_factory=dict)  # url path -> page script hash
    widgets: dict[str, object] = field(default_factory=dict)  # widget id -> element proto (last seen)
    session_id: str = ""
    errors: list[str] = field(default_factory=list)
    ws: object = None

    async def connect(self) -> None:
        self.ws = await websockets.connect(self.url.replace("http", "ws") + "/_stcore/stream",
                                           subprotocols=["streamlit"], max_size=None, open_timeout=TIMEOUT_S)

    async def rerun(self, page: str = "", states: list | None = None) -> float:
        """Send a rerun (optionally on another page, with widget states); seconds until the script finished."""
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        if page:
            msg.rerun_script.page_script_hash = self.pages[page]
        for state in states or []:
            msg.rerun_script.widget_states.widgets.append(state)
        start = time.perf_counter()
        await self.ws.send(msg.SerializeToString())
        while True:
            fwd = ForwardMsg()
            fwd.ParseFromString(await asyncio.wait_for(self.ws.recv(), TIMEOUT_S))
            kind = fwd.WhichOneof("type")
            if kind == "new_session":
                self.session_id = fwd.new_session.initialize.session_id or self.session_id
                for p in fwd.new_session.app_pages:
                    self.pages[p.url_pathname] = p.page_script_hash
            elif kind == "navigation":
                for p in fwd.navigation.app_pages:
                    self.pages[p.url_pathname] = p.page_script_hash
            elif kind == "delta":
                self._see(fwd.delta)
            elif kind == "script_finished" and fwd.script_finished in (0, 1):  # finished (or compile error)
                return time.perf_counter() - start

    def _see(self, delta) -> None:
        if delta.WhichOneof("type") != "new_element":
            return
        element = delta.new_element
        if element.WhichOneof("type") == "exception":
            self.errors.append(element.exception.message)
        widget = getattr(element, element.WhichOneof("type") or "", None)
        if getattr(widget, "id", ""):
            self.widgets[widget.id] = widget

    def widget(self, key: str):
        """The widget whose user key is ``key`` (ids end in '-<key>')."""
        return next(w for wid, w in self.widgets.items() if wid.endswith(f"-{key}"))

    async def close(self) -> None:
        await self.ws.close()


def state(widget, **value) -> object:
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    s = WidgetState(id=widget.id)
    for name, v in value.items():
        if name == "double_array_value":
            s.double_array_value.data.extend(v)
        else:
            setattr(s, name, v)
    return s


async def student(url: str) -> dict:
    """Explorer, a custom spec with phi moved, then Results: times, errors."""
    s = Session(url)
    out = {"error": None}
    try:
        start = time.perf_counter()
        await s.connect()
        await s.rerun()  # the address a class is given opens the Lesson; then the explorer
        await s.rerun(page="explorer")
        out["explorer_s"] = time.perf_counter() - start
        custom = [state(s.widget("mode"), string_value="Custom φ, α, β, γ")]
        await s.rerun(page="explorer", states=custom)
        phi = s.widget("phi_slider")
        await s.rerun(page="explorer", states=[*custom, state(phi, double_array_value=[2.0])])
        await s.rerun(page="results")
        out["path_s"] = time.perf_counter() - start
        out["exceptions"] = s.errors
        await s.close()
    except Exception as exc:  # a refused or dropped connection counts, with its reason
        out["error"] = f"{exc.__class__.__name__}: {exc}"
    return out


async def uploader(url: str, photo: bytes, xsrf: str) -> dict:
    """Open the CAM page and upload one photo, as the browser does (file URLs, HTTP PUT, widget state)."""
    from streamlit.proto.Common_pb2 import FileUploaderState, UploadedFileInfo

    s = Session(url)
    out = {"error": None}
    try:
        await s.connect()
        await s.rerun()
        await s.rerun(page="cam")
        uploader_widget = s.widget("cam_upload")
        req = BackMsg()
        req.file_urls_request.request_id = "r1"
        req.file_urls_request.file_names.append("phone.jpg")
        req.file_urls_request.session_id = s.session_id
        await s.ws.send(req.SerializeToString())
        while True:
            fwd = ForwardMsg()
            fwd.ParseFromString(await asyncio.wait_for(s.ws.recv(), TIMEOUT_S))
            if fwd.WhichOneof("type") == "file_urls_response":
                urls = fwd.file_urls_response.file_urls[0]
                break
        start = time.perf_counter()
        await asyncio.to_thread(put_file, url + urls.upload_url, photo, xsrf)
        info = UploadedFileInfo(name="phone.jpg", size=len(photo), file_id=urls.file_id)
        info.file_urls.CopyFrom(urls)
        w = state(uploader_widget)
        w.file_uploader_state_value.CopyFrom(FileUploaderState(uploaded_file_info=[info]))
        await s.rerun(page="cam", states=[w])
        out["upload_s"] = time.perf_counter() - start
        out["exceptions"] = s.errors
        await s.close()
    except Exception as exc:
        out["error"] = f"{exc.__class__.__name__}: {exc}"
    return out


def put_file(url: str, data: bytes, xsrf: str) -> None:
    boundary = "effnetlabbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"phone.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="PUT", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "X-Xsrftoken": xsrf,
        "Cookie": f"_streamlit_xsrf={xsrf}"})
    urllib.request.urlopen(req, timeout=TIMEOUT_S).read()


def browsers(url: str, n: int) -> dict:
    """The end-to-end picture: ``n`` real Chromium tabs at once, seconds until the explorer's numbers show
    (and then Results' table), as a student sees it. Needs Debian's chromium and the playwright package."""
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {"explorer": [], "results": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        pages = [browser.new_page(viewport={"width": 1280, "height": 720}) for _ in range(n)]
        start = time.perf_counter()
        for page in pages:
            page.goto(url + "/", wait_until="commit")
        for page in pages:
            page.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=TIMEOUT_S * 1000)
            times["explorer"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for page in pages:
            page.goto(url + "/results", wait_until="commit")
        for page in pages:
            page.get_by_text("Table 1, from your runs").wait_for(timeout=TIMEOUT_S * 1000)
            times["results"].append(time.perf_counter() - start)
        browser.close()
    return {"browsers": n, **{f"{k}_{q}": v for k, vs in times.items() for q, v in quantiles(vs).items()}}


# ----------------------------------------------------------------------------- the server and its cost
class Server:
    def __init__(self, checkpoints: Path, data: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "EFFNET_CHECKPOINTS": str(checkpoints), "EFFNET_DATA": str(data),
               "PYTHONPATH": str(PROJECT)}
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (the server writes to it for its whole life)
        self.proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                      "--server.port", str(self.port), "--server.address", "127.0.0.1",
                                      "--browser.gatherUsageStats", "false"], cwd=PROJECT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/_stcore/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.3)

    def xsrf(self) -> str:
        with urllib.request.urlopen(self.url + "/_stcore/health", timeout=30) as r:  # sets the XSRF cookie
            for header in r.headers.get_all("Set-Cookie") or []:
                if header.startswith("_streamlit_xsrf="):
                    return header.split(";")[0].split("=", 1)[1]
        return ""

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self, key: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # resets VmHWM (needs root)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]}


async def crowd(coroutines) -> list[dict]:
    return await asyncio.wait_for(asyncio.gather(*coroutines), TIMEOUT_S * 2)


def level(server: Server, n: int, make, settle_s: float = 5.0) -> dict:
    """Run ``n`` sessions at once; the server's CPU and memory around them (memory again after ``settle_s``)."""
    server.reset_peak()
    before_cpu, base_mb = server.cpu_s(), server.rss_mb()
    outs = asyncio.run(crowd([make() for _ in range(n)]))
    cpu = server.cpu_s() - before_cpu
    time.sleep(5)
    soon_mb = server.rss_mb()
    time.sleep(max(0.0, settle_s - 5))  # closed sessions are dropped after Streamlit's disconnectedSessionTTL
    failed = [o["error"] for o in outs if o["error"]]
    return {"sessions": n, "errors": len(failed) + sum(len(o.get("exceptions") or []) for o in outs),
            "error_samples": failed[:3], "server_cpu_s_per_session": cpu / n,
            "memory_base_mb": base_mb, "memory_peak_mb": server.rss_mb("VmHWM"), "memory_after_5s_mb": soon_mb,
            "memory_settled_mb": server.rss_mb(), "settle_s": settle_s,
            **{f"{k}_{q}": v for k in ("explorer_s", "path_s", "upload_s")
               for q, v in quantiles([o[k] for o in outs if k in o]).items()}}


def phone_photo() -> bytes:
    """A 4000x3000 JPEG with photo-like content (smooth light, texture, an object), about 3-5 MB."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:3000, 0:4000].astype(np.float32)
    base = np.stack([120 + 60 * np.sin(xx / 700), 110 + 50 * np.cos(yy / 500), 90 + 40 * np.sin((xx + yy) / 900)], -1)
    base[1000:2000, 1500:2600] = (200, 60, 40)
    noise = rng.normal(0, 18, base.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def tiny_runs(folder: Path) -> tuple[Path, Path]:
    from cifar_files import write_cifar_archive

    data, checkpoints = folder / "data", folder / "checkpoints"
    data.mkdir()
    write_cifar_archive(data / "cifar-100-python.tar.gz", n_train=320, n_test=100)
    for name, phi in (("tiny-a", "-4"), ("tiny-b", "-3.5")):
        subprocess.run([sys.executable, "-m", "effnet.train", "--phi", phi, "--epochs", "2", "--batch-size", "32",
                        "--val-size", "64", "--eval-subset", "64", "--device", "cpu", "--data-dir", str(data),
                        "--out", str(checkpoints / name)], cwd=PROJECT, check=True, capture_output=True)
    return checkpoints, data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", default="1,10,30", help="comma-separated session counts")
    p.add_argument("--uploads", type=int, default=10, help="simultaneous 12-MP CAM uploads (0: skip)")
    p.add_argument("--browsers", type=int, default=3, help="real Chromium tabs for the end-to-end view (0: skip)")
    p.add_argument("--checkpoints", type=Path, help="serve these runs (default: two tiny runs made here)")
    p.add_argument("--data", type=Path, help="CIFAR-100 folder for the server (default: a generated one)")
    p.add_argument("--settle-s", type=float, default=135.0,
                   help="after the uploads, wait this long for closed sessions to be dropped (TTL 120 s)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints, data = (args.checkpoints, args.data) if args.checkpoints else tiny_runs(Path(tmp))
        server = Server(checkpoints, data or Path(tmp))
        try:
            asyncio.run(crowd([student(server.url)]))  # warm-up: imports and caches, as after the first student
            report = {"machine": f"{os.cpu_count()} cores", "levels": []}
            print(f"server idle: {server.rss_mb():.0f} MB")
            for n in (int(x) for x in args.sessions.split(",")):
                row = level(server, n, lambda: student(server.url))
                report["levels"].append(row)
                print(f"{n:>3} sessions: explorer p50 {row['explorer_s_p50']:.2f} s p95 {row['explorer_s_p95']:.2f} s"
                      f" | whole path p50 {row['path_s_p50']:.2f} s p95 {row['path_s_p95']:.2f} s"
                      f" | {row['server_cpu_s_per_session']:.3f} CPU-s/session | errors {row['errors']}"
                      f" | memory peak {row['memory_peak_mb']:.0f} MB, settled {row['memory_settled_mb']:.0f} MB",
                      flush=True)
            if args.browsers:
                row = browsers(server.url, args.browsers)
                report["browsers"] = row
                print(f"{args.browsers} real Chromium tabs at once: explorer numbers shown after p50 "
                      f"{row['explorer_p50']:.2f} s (p95 {row['explorer_p95']:.2f} s), Results table after p50 "
                      f"{row['results_p50']:.2f} s (p95 {row['results_p95']:.2f} s)", flush=True)
            if args.uploads:
                photo, xsrf = phone_photo(), server.xsrf()
                cold = server.rss_mb()
                asyncio.run(crowd([uploader(server.url, photo, xsrf)]))  # warm-up: torch and the models load once
                print(f"server after one CAM upload (torch imported, models cached): {server.rss_mb():.0f} MB "
                      f"(before: {cold:.0f} MB)")
                row = level(server, args.uploads, lambda: uploader(server.url, photo, xsrf), args.settle_s)
                report["uploads"] = row
                print(f"{args.uploads} simultaneous {len(photo) / 1e6:.1f} MB 12-MP uploads: p50 "
                      f"{row['upload_s_p50']:.2f} s p95 {row['upload_s_p95']:.2f} s | errors {row['errors']} "
                      f"{row['error_samples']} | memory base {row['memory_base_mb']:.0f} MB, peak "
                      f"{row['memory_peak_mb']:.0f} MB, {row['memory_after_5s_mb']:.0f} MB 5 s later, "
                      f"{row['memory_settled_mb']:.0f} MB after {args.settle_s:.0f} s", flush=True)
        finally:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
