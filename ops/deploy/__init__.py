"""`tiergate deploy render`: deployment artifacts generated from the config the processes read.

Each target is a module with a pure `render(settings, config_text) -> {relative path: text}`;
`render` joins the chosen targets and `write` puts the files under a folder (the only I/O here).
The defaults rendered from the shipped config are committed under deploy/, and a test fails when
they differ from a fresh render.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from core.settings import Settings

from . import compose, container, k8s, observability, systemd

Renderer = Callable[[Settings, str], dict[str, str]]


def _with_image(target: Renderer) -> Renderer:
    """Compose and Kubernetes run the image: the Dockerfile comes with them."""

    def render(settings: Settings, config_text: str) -> dict[str, str]:
        return {"Dockerfile": container.dockerfile(settings), **target(settings, config_text)}

    return render


TARGETS: dict[str, Renderer] = {
    "compose": _with_image(compose.render),
    "k8s": _with_image(k8s.render),
    "systemd": systemd.render,
    "observability": observability.render,
}


def render(settings: Settings, config_text: str, targets: Iterable[str] = TARGETS) -> dict[str, str]:
    """Every file of `targets`, by path relative to the output folder, sorted by path."""
    files: dict[str, str] = {}
    for target in targets:
        files.update(TARGETS[target](settings, config_text))
    return dict(sorted(files.items()))


def write(files: dict[str, str], out: Path) -> list[Path]:
    """Write `files` under `out` (creating folders); the paths written. Raises OSError."""
    written = []
    for relative, text in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
