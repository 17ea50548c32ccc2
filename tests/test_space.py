"""The Space (upload/space, built by upload/build_space.py): its requirements resolve, the app serves images to a
real gradio_client, and the page renders in headless Chromium."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import free_port
from PIL import Image

UPLOAD = Path(__file__).resolve().parents[1] / "upload"
WHEEL = "hf_vq-0.1.0-py3-none-any.whl"


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"_hf_vq_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def needs_gradio() -> None:
    if importlib.util.find_spec("gradio") is None:  # the build only reads its version: no need to import it
        pytest.skip("the build pins the installed gradio: pip install gradio")


def test_built_space_requirements_resolve(tmp_path):
    needs_gradio()
    build = load_script(UPLOAD / "build_space.py")
    out = build.main(["--out", str(tmp_path / "space"), "--no-build-isolation"])

    assert sorted(f.name for f in out.iterdir()) == sorted([".hf_vq-output.json", "README.md", "app.py",
                                                            "requirements.txt", WHEEL])
    lines = (out / "requirements.txt").read_text().splitlines()
    torch_pin = f"torch=={version('torch').split('+')[0]}+cpu"
    assert lines[1:] == ["--extra-index-url https://download.pytorch.org/whl/cpu", torch_pin, f"./{WHEEL}",
                         f"gradio=={version('gradio')}"]
    assert f"\nsdk_version: {version('gradio')}\n" in (out / "README.md").read_text()

    # Resolve against this environment. Where download.pytorch.org cannot be reached (as on the machine these
    # tests were written on) pip warns and goes on: the installed torch (the CPU wheel) satisfies the pin.
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--retries", "0", "--timeout", "10",
         "--report", str(report), "-r", "requirements.txt"],
        cwd=out, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    installs = {item["metadata"]["name"]: item for item in json.loads(report.read_text())["install"]}
    assert installs["hf_vq"]["download_info"]["url"] == (out / WHEEL).as_uri()


def test_a_torch_version_pip_cannot_pin_is_refused_before_the_build(tmp_path, capsys):
    build = load_script(UPLOAD / "build_space.py")
    with pytest.raises(SystemExit):
        build.main(["--out", str(tmp_path / "space"), "--torch", "notaversion"])
    assert "'notaversion' is not a torch version" in capsys.readouterr().err
    assert not (tmp_path / "space").exists()


def test_push_needs_a_token(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    needs_gradio()
    build = load_script(UPLOAD / "build_space.py")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(SystemExit, match="--push needs a Hugging Face token"):
        build.main(["--out", str(tmp_path / "space"), "--push", "someone/hf-vq-demo"])
    with pytest.raises(SystemExit):  # argparse: a bare name would make the wheel's URL wrong
        build.main(["--out", str(tmp_path / "space"), "--push", "hf-vq-demo"])
    assert not (tmp_path / "space").exists()  # refused before any build


def test_push_names_the_wheel_by_its_url_in_the_space(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    needs_gradio()
    build = load_script(UPLOAD / "build_space.py")
    calls = {}

    def fake_wheel(dest, isolation=True):
        (dest / WHEEL).write_bytes(b"not a real wheel")
        return dest / WHEEL

    def fake_create_repo(repo_id, **kwargs):
        calls["create_repo"] = kwargs
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def fake_upload_folder(**kwargs):
        calls["upload_folder"] = kwargs
        return "https://huggingface.co/spaces/someone/hf-vq-demo/commit/0"

    monkeypatch.setattr(build, "build_wheel", fake_wheel)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    monkeypatch.setattr(huggingface_hub, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", fake_upload_folder)
    out = build.main(["--out", str(tmp_path / "space"), "--push", "someone/hf-vq-demo"])

    url = f"hf_vq @ https://huggingface.co/spaces/someone/hf-vq-demo/resolve/main/{WHEEL}"
    assert url in (out / "requirements.txt").read_text().splitlines()
    assert calls["create_repo"] == {"repo_type": "space", "space_sdk": "gradio", "exist_ok": True}
    upload = calls["upload_folder"]
    assert (upload["repo_id"], upload["repo_type"], Path(upload["folder_path"])) == ("someone/hf-vq-demo", "space", out)
    assert upload["ignore_patterns"] == [".hf_vq-output.json"]


@pytest.fixture(scope="module")
def space_url():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported
        pytest.importorskip("gradio", reason="the Space needs gradio: pip install gradio")
        app = load_script(UPLOAD / "space" / "app.py")
        demo = app.build_demo(app.load_pipeline(device="cpu"))  # the bundled model
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            demo.close()


def test_space_serves_images_to_gradio_client(space_url):
    gradio_client = pytest.importorskip("gradio_client", reason="pip install gradio_client (comes with gradio)")
    client = gradio_client.Client(space_url, verbose=False)
    gallery = client.predict("Bag", 2, 1.0, 1.0, 0, 0, api_name="/generate")
    assert len(gallery) == 2
    image = Image.open(gallery[0]["image"])
    assert image.size == (112, 112)  # 28x28, enlarged 4x


def test_space_page_renders_in_chromium(space_url, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    shot = tmp_path / "page.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1000,800", "--virtual-time-budget=5000", f"--screenshot={shot}", space_url],
                   capture_output=True, timeout=60, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 800)
    colors = image.getcolors(maxcolors=1 << 20)
    # the page while gradio loads: ~100 colours, a small orange logo; rendered: ~700 colours, the orange button
    assert len(colors) > 300, "the app did not render"
    orange = sum(count for count, (r, g, b) in colors if r > 200 and 80 < g < 140 and b < 60)
    assert orange > 5000, "no Generate button on the page"
