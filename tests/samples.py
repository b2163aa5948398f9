"""Real input files for tests, made with Pillow (importable as `samples`)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from PIL import Image, ImageDraw


def page_image(n: int = 1, size: tuple[int, int] = (400, 300)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, size[0] - 20, 60), outline="black", width=3)
    draw.text((30, 30), f"Page {n}: the quick brown fox", fill="black")
    for y in range(90, size[1] - 20, 24):
        draw.line((30, y, size[0] - 30 - (y * n) % 90, y), fill="black", width=2)
    return image


def write_pdf(path: Path, pages: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [page_image(n) for n in range(1, pages + 1)]
    images[0].save(path, "PDF", resolution=72, save_all=True, append_images=images[1:])
    return path


def write_image(path: Path, fmt: str, frames: int = 1, n: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [page_image(n + i) for i in range(frames)]
    if fmt == "GIF":
        images = [im.convert("P") for im in images]
    if frames > 1:
        images[0].save(path, fmt, save_all=True, append_images=images[1:])
    else:
        images[0].save(path, fmt)
    return path


def write_corrupt_pdf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\nthis is not a real pdf\n%%EOF\n")
    return path


def write_docx(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", "<w:document/>")
    return path
