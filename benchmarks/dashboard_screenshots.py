"""Screenshots of a run's TensorBoard, one per tab, taken in headless Chromium: what a user sees in a browser.

    python benchmarks/dashboard_screenshots.py [--run RUN_FOLDER] [--output docs/dashboard]

Without ``--run`` it first runs a short mbppo search on the built-in digits workload (``mpq-rl search --episodes
60``). It starts a real ``tensorboard`` on the run's ``tb`` folder, opens each tab in Chromium (Debian's
``chromium`` package: ``apt-get install -y chromium``), saves one PNG per tab (256 colours, to stay small) and
stops TensorBoard. Not part of ``make test``: it needs a browser.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TABS = {
    "timeseries": "timeseries",
    "scalars": "scalars",
    "custom_scalars": "custom_scalars",
    "images": "images",
    "images-search": "images&tagFilter=search",
    "text": "text",
    "hparams": "hparams",
    "distributions": "distributions",
    "histograms": "histograms",
}
"""PNG name -> TensorBoard URL fragment (a tab, and for the search's images a tag filter that opens them)."""
WINDOW = (1400, 1800)
"""Browser window in pixels (width, height): tall enough for a tab's first screenful of charts."""
RENDER_MS = 20000
"""Virtual time Chromium gives the page's scripts to fetch and draw the charts before the screenshot."""
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def browser() -> str:
    """The Chromium executable; a clear exit when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("dashboard_screenshots: no Chromium found: apt-get install -y chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_tensorboard(logdir: Path, port: int) -> subprocess.Popen:
    """A real ``tensorboard`` serving ``logdir`` on ``port``, once it answers."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--reload_interval", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    sys.exit(f"dashboard_screenshots: tensorboard did not answer on port {port}")


def screenshot(chromium: str, url: str, path: Path) -> None:
    """One screenshot of ``url`` into ``path``, in a fresh browser profile, quantized to 256 colours."""
    with tempfile.TemporaryDirectory() as profile:
        raw = Path(profile) / "shot.png"
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}/user",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--virtual-time-budget={RENDER_MS}",
                f"--screenshot={raw}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        Image.open(raw).convert("RGB").quantize(colors=256).save(path, optimize=True)


def demo_run(folder: Path, episodes: int) -> None:
    """A short mbppo search on digits into ``folder`` (the default searcher, the default workload)."""
    command = [sys.executable, "-m", "mpq_rl", "search", "--episodes", str(episodes), "--output", str(folder)]
    subprocess.run([*command, "--no-progress"], check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run folder (default: run a short mbppo search first)")
    parser.add_argument("--episodes", type=int, default=60, help="episodes of the search run without --run")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "dashboard", help="folder for the PNGs")
    args = parser.parse_args()
    chromium = browser()
    run = args.run or ROOT / "runs" / "dashboard-screenshots"
    if args.run is None and not (run / "summary.json").is_file():
        demo_run(run, args.episodes)
    args.output.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_tensorboard(run / "tb", port)
    try:
        for name, fragment in TABS.items():
            path = args.output / f"{name}.png"
            screenshot(chromium, f"http://127.0.0.1:{port}/?darkMode=false#{fragment}", path)
            print(f"{name}: {path} ({path.stat().st_size // 1024} KiB)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
