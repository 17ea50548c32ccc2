"""Latency of the Space app (upload/space/app.py) as a visitor sees it, through gradio_client.

    OMP_NUM_THREADS=2 python upload/bench_space.py [--screenshot upload/space/screenshot.png]

Cold: from starting `python app.py` (bundled model unless HF_VQ_MODEL is set) to the first images returned.
Warm: median of the next `--runs` calls. Each call asks for `-n` images of one class. With --screenshot, headless
Chromium (driven over the DevTools protocol on a pipe) opens the page, presses Generate and saves the page.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

APP = Path(__file__).resolve().parent / "space" / "app.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(url: str, server: subprocess.Popen, timeout: float = 300.0):
    from gradio_client import Client

    end = time.monotonic() + timeout
    while True:
        try:
            return Client(url, verbose=False)
        except Exception:
            if server.poll() is not None:
                raise SystemExit(f"the app exited with code {server.returncode}") from None
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


class Chromium:
    """Headless Chromium driven over the DevTools protocol on fds 3 and 4 (--remote-debugging-pipe)."""

    def __init__(self, binary: str, width: int = 1000, height: int = 800):
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()

        def child_fds():
            low_r, low_w = os.dup(to_chrome), os.dup(from_chrome)  # neither is 3 or 4 itself
            os.dup2(low_r, 3)
            os.dup2(low_w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-pipe",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._id, self._buffer, self.session = 0, b"", None
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def wait_for(self, expression: str, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value"):
            if time.monotonic() > end:
                raise TimeoutError(expression)
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        os.close(self._write)
        os.close(self._read)


def screenshot_after_generate(url: str, path: str, binary: str) -> None:
    browser = Chromium(binary)
    try:
        browser.send("Page.navigate", url=url)
        browser.wait_for("!!document.querySelector('button.primary')")
        browser.send("Runtime.evaluate", expression="document.querySelector('button.primary').click()")
        browser.wait_for("document.querySelectorAll('img').length >= 8")  # the gallery's images
        time.sleep(1.0)  # let them paint
        png = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
        Path(path).write_bytes(png)
    finally:
        browser.close()
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", default="Sneaker")
    p.add_argument("-n", type=int, default=8, help="images per call")
    p.add_argument("--runs", type=int, default=5, help="warm calls")
    p.add_argument("--screenshot", default=None, help="PNG to write (needs chromium)")
    args = p.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False")
    knobs = dict(label=args.label, n=args.n, guidance_scale=2.0, temperature=1.0, top_k=0, api_name="/generate")
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        client = connect(url, server)
        up = time.perf_counter() - start
        images = client.predict(seed=0, **knobs)
        cold = time.perf_counter() - start
        assert len(images) == args.n, images
        warm = []
        for seed in range(1, args.runs + 1):
            t = time.perf_counter()
            client.predict(seed=seed, **knobs)
            warm.append(time.perf_counter() - t)
        if args.screenshot:
            binary = shutil.which("chromium") or shutil.which("chromium-browser")
            if binary is None:
                raise SystemExit("--screenshot needs chromium on PATH (Debian: apt-get install chromium)")
            screenshot_after_generate(url, args.screenshot, binary)
    finally:
        server.terminate()
        server.wait(30)
    result = {"threads": os.environ.get("OMP_NUM_THREADS"), "n": args.n, "server_up_s": round(up, 2),
              "cold_s": round(cold, 2), "warm_median_s": round(statistics.median(warm), 3),
              "warm_s": [round(w, 3) for w in warm]}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
