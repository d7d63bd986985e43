"""The web viewer in a real browser: `ns-train neus-dtu --vis viewer` serves the page, headless Chromium opens it,
connects over the websocket and shows the model's render in the viewport. And the viewer's mesh preview button."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pytest
import torch
from helpers import bin_path, ns_train_command
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs a Chromium binary on PATH (Debian: apt-get install chromium; .ci/setup installs it)"
)

WINDOW = (800, 600)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_page(port: int, process: subprocess.Popen, log_path: Path, timeout: float = 600.0) -> None:
    """Until the viewer answers HTTP on `port`; fails with the end of the log if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args[0]} exited with {process.returncode} before the viewer came up:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2.0)
    pytest.fail(f"the viewer did not answer on port {port} within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def screenshot(url: str, output: Path, virtual_time_ms: int) -> np.ndarray:
    """Headless Chromium with software WebGL (the recipe in DESIGN.md), offline-safe flags; RGB pixels."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--virtual-time-budget={virtual_time_ms}",
             f"--screenshot={output}", url],
            capture_output=True, timeout=300, check=False,
        )
    assert output.is_file(), "Chromium wrote no screenshot"
    with Image.open(output) as image:
        return np.asarray(image.convert("RGB"))


def viewport(pixels: np.ndarray) -> np.ndarray:
    """The 3D viewport left of the control panel, below the header, clear of the axes gizmo."""
    return pixels[100:500, 50:400].astype(np.float64)


def holds_a_render(pixels: np.ndarray) -> bool:
    """nerfstudio's page (its dark header) with a render drawn over viser's white background: the viewport is
    neither white (no render arrived), nor one flat colour (a blank or failed canvas)."""
    header_is_dark = pixels[:45].mean() < 100.0
    patch = viewport(pixels)
    white_fraction = (patch.min(axis=-1) > 240).mean()
    return bool(header_is_dark and white_fraction < 0.2 and patch.std() > 2.0)


def assert_page_shows_a_render(command, tmp_path: Path, cwd: Optional[Path] = None) -> None:
    """Start `command` (a nerfstudio command serving the viewer on the port it names) in `cwd` (default
    `tmp_path`), open its page in headless Chromium and check that the viewport holds a render; the process is
    stopped afterwards."""
    port = int(command[command.index("--viewer.websocket-port") + 1])
    log_path = tmp_path / "viewer.log"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=cwd or tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_page(port, process, log_path)
        # the first render needs the client's camera, then a CPU render: give the page more time if it is not there yet
        for attempt, virtual_time_ms in enumerate((15000, 30000, 60000)):
            pixels = screenshot(f"http://127.0.0.1:{port}/", tmp_path / f"viewer_{attempt}.png", virtual_time_ms)
            if holds_a_render(pixels):
                break
        assert pixels.shape == (WINDOW[1], WINDOW[0], 3)
        assert pixels[:45].mean() < 100.0, "not nerfstudio's viewer page (its header is dark)"
        patch = viewport(pixels)
        assert (patch.min(axis=-1) > 240).mean() < 0.2, "the viewport is viser's empty white background: no render arrived"
        assert patch.std() > 2.0, "the viewport is one flat colour"
        assert process.poll() is None, f"{Path(command[0]).name} died while the page was open"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.slow
@needs_chromium
def test_viewer_page_shows_the_render(small_scene, tmp_path):
    """During `ns-train`, the viewer's page shows the model's render."""
    command = ns_train_command("neus-dtu", small_scene.output_dir, steps=3, output_dir=tmp_path / "outputs", vis="viewer")
    assert_page_shows_a_render([*command, "--viewer.websocket-port", str(free_port())], tmp_path)


@pytest.mark.slow
@needs_chromium
def test_ns_viewer_reopens_a_finished_run(tiny_neus_run, tmp_path):
    """`ns-viewer --load-config` rebuilds the model from config.yml and its checkpoint and renders it. It runs
    where ns-train ran, as users do: config.yml holds the run's paths relative to that directory."""
    command = [bin_path("ns-viewer"), "--load-config", str(tiny_neus_run), "--viewer.websocket-port", str(free_port())]
    training_dir = tiny_neus_run.parents[4]  # <dir>/outputs/<scene>/<method>/<timestamp>/config.yml
    assert_page_shows_a_render(command, tmp_path, cwd=training_dir)


@needs_chromium
def test_empty_viser_page_is_not_taken_for_a_render(tmp_path):
    """The check above is not fooled by viser's page without a render."""
    import viser

    port = free_port()
    server = viser.ViserServer(host="127.0.0.1", port=port, verbose=False)
    try:
        pixels = screenshot(f"http://127.0.0.1:{port}/", tmp_path / "empty.png", 8000)
    finally:
        server.stop()
    assert not holds_a_render(pixels)


class SphereModel(torch.nn.Module):
    """Stands in for a surface model: the SDF of a sphere of radius 0.5 about (0.1, 0, 0)."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(sphere_radius=1.0)
        self.offset = torch.nn.Parameter(torch.tensor([0.1, 0.0, 0.0]))

    def level_set(self, points):
        return (points - self.offset).norm(dim=-1) - 0.5


class RecordingScene:
    def __init__(self):
        self.meshes = {}

    def add_mesh_simple(self, name, vertices, faces, **style):
        self.meshes[name] = (vertices, faces)


def test_mesh_preview_button_shows_the_surface_in_viewer_units():
    from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

    from neurecon_ns.render.viewer_mesh import MESH_NODE, MeshPreviewButton

    model = SphereModel()
    model.train()
    button = MeshPreviewButton(model, resolution=32)
    button.viser_server = SimpleNamespace(scene=RecordingScene())  # what install() records
    button.cb_hook(button)
    button.join(timeout=60)
    vertices, faces = button.viser_server.scene.meshes[MESH_NODE]
    assert len(faces) > 100
    # the viewer draws the training space scaled by VISER_NERFSTUDIO_SCALE_RATIO
    radii = np.linalg.norm(vertices / VISER_NERFSTUDIO_SCALE_RATIO - [0.1, 0.0, 0.0], axis=1)
    np.testing.assert_allclose(radii, 0.5, atol=0.01)
    assert model.training, "the click must not switch the model out of training mode"


def test_mesh_preview_button_without_a_surface_keeps_going():
    from neurecon_ns.render.viewer_mesh import MeshPreviewButton

    model = SphereModel()
    model.level_set = lambda points: points.norm(dim=-1) + 1.0  # no zero crossing
    button = MeshPreviewButton(model, resolution=16)
    button.viser_server = SimpleNamespace(scene=RecordingScene())
    button.cb_hook(button)
    button.join(timeout=60)
    assert not button.viser_server.scene.meshes
    assert button.show_preview() is None


def test_mesh_preview_click_returns_before_the_mesh_is_extracted():
    """nerfstudio calls the button's hook holding the trainer's lock: the hook must not wait for marching cubes."""
    import threading

    from neurecon_ns.render.viewer_mesh import MESH_NODE, MeshPreviewButton

    model = SphereModel()
    release = threading.Event()
    sphere_sdf = model.level_set
    model.level_set = lambda points: release.wait(60) and sphere_sdf(points)
    button = MeshPreviewButton(model, resolution=24)
    button.viser_server = SimpleNamespace(scene=RecordingScene())
    started = time.monotonic()
    button.cb_hook(button)
    assert time.monotonic() - started < 5.0 and not button.viser_server.scene.meshes
    button.cb_hook(button)  # a second click while the first is running starts nothing new
    release.set()
    button.join(timeout=60)
    assert MESH_NODE in button.viser_server.scene.meshes


def registered_methods():
    from importlib.metadata import entry_points

    return sorted(entry.name for entry in entry_points(group="nerfstudio.method_configs") if entry.value.startswith("neurecon_ns."))


@pytest.mark.parametrize("method", registered_methods())
def test_every_registered_method_offers_the_mesh_preview_button(method):
    """What nerfstudio's viewer installs as controls: every `ViewerElement` it finds on the pipeline's model."""
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerElement

    from neurecon_ns.render.viewer_mesh import MeshPreviewButton
    from neurecon_ns.training import method_config

    config = method_config(method).pipeline.model
    model = config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1)
    buttons = [element for _, element in parse_object(model, ViewerElement, "Custom Elements") if isinstance(element, MeshPreviewButton)]
    assert [button.name for button in buttons] == ["Preview mesh"]
    assert buttons[0]._model() is model


class DevToolsPage:
    """Headless Chromium driven over the DevTools protocol: open a page, run JavaScript, click, take screenshots."""

    def __init__(self, url: str, profile: str) -> None:
        from websockets.sync.client import connect

        port = free_port()
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--remote-debugging-port={port}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as response:
                    targets = json.loads(response.read())
                page = next(target for target in targets if target["type"] == "page")
                break
            except (OSError, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def screenshot(self) -> np.ndarray:
        import base64
        import io

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB")).astype(np.float64)

    def click(self, x: float, y: float) -> None:
        for event in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=event, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        self.socket.close()
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


BUTTON_CENTER_JS = """(() => {
  const button = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Preview mesh');
  if (!button) return null;
  button.scrollIntoView();
  const box = button.getBoundingClientRect();
  return [box.left + box.width / 2, box.top + box.height / 2];
})()"""


def settled_screenshot(page: DevToolsPage, timeout: float = 60.0) -> np.ndarray:
    """A screenshot once two taken 1 s apart agree (the viewer has finished refining its render)."""
    previous = page.screenshot()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        current = page.screenshot()
        if np.abs(current - previous).max(axis=-1).mean() < 0.5:
            return current
        previous = current
    return previous


@pytest.mark.slow
@needs_chromium
def test_clicking_preview_mesh_in_the_browser_shows_the_mesh(tiny_neus_run, tmp_path):
    """`ns-viewer` on a finished run: a mouse click on "Preview mesh" in headless Chromium adds the surface to
    the 3D scene, and the viewport shows it (grey, lit) over the render."""
    port = free_port()
    command = [bin_path("ns-viewer"), "--load-config", str(tiny_neus_run), "--viewer.websocket-port", str(port)]
    log_path = tmp_path / "viewer.log"
    with open(log_path, "w") as log:
        viewer = subprocess.Popen(command, cwd=tiny_neus_run.parents[4], env=dict(os.environ, PYTHONWARNINGS="ignore"),
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    page = None
    try:
        wait_for_page(port, viewer, log_path)
        with tempfile.TemporaryDirectory() as profile:
            page = DevToolsPage(f"http://127.0.0.1:{port}/", profile)
            deadline = time.monotonic() + 120
            while page.evaluate(BUTTON_CENTER_JS) is None:
                assert time.monotonic() < deadline, "no 'Preview mesh' button on the viewer's page"
                time.sleep(1.0)
            before = settled_screenshot(page)
            assert holds_a_render(before.astype(np.uint8))
            page.click(*page.evaluate(BUTTON_CENTER_JS))
            while "Preview mesh:" not in log_path.read_text():
                assert time.monotonic() < deadline + 120, f"the click reached no callback:\n{log_path.read_text()[-2000:]}"
                time.sleep(1.0)
            after = settled_screenshot(page)
            for name, pixels in (("before", before), ("after", after)):
                Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / f"{name}_click.png")
            page.close()
            page = None
    finally:
        if page is not None:
            page.close()
        os.killpg(viewer.pid, signal.SIGTERM)
        viewer.wait(timeout=30)
    assert "faces at resolution 64, shown as /neurecon/mesh_preview" in log_path.read_text()
    changed = np.abs(after - before).max(axis=-1) > 30
    viewport_changed = viewport(changed.astype(np.float64)[..., None].repeat(3, -1))[..., 0].astype(bool)
    assert viewport_changed.mean() > 0.02, "the viewport looks the same after the click"
    # the mesh is drawn grey (200, 200, 200) and lit: where the picture changed, it changed to grey
    new_pixels = viewport(after)[viewport_changed]
    greyness = new_pixels.max(axis=-1) - new_pixels.min(axis=-1)
    assert np.median(greyness) < 12
