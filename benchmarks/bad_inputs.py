"""Every bad input we know of, fed to the real CLI: prints what each returns (exit code, message).

    python benchmarks/bad_inputs.py [--out runs/bad_inputs.json]

Each case builds its input in a temp directory and runs `edge-persrep ...` in a subprocess.
Unusual-but-valid photos (16-bit, CMYK, RGBA, greyscale, EXIF-rotated) must be accepted (exit 0).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def cli(*args) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "edge_persrep.cli", *map(str, args)], capture_output=True, text=True)
    lines = out.stderr.strip().splitlines()
    return out.returncode, (lines[-1] if lines else out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "")


def png_bomb(path: Path) -> None:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/bad_inputs.json"))
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    pristine = tmp / "pristine"
    assert cli("export", "--backbone", "efficientnet_lite0", "--pretrained", "--out", pristine)[0] == 0
    assert cli("enroll", pristine, EXAMPLES / "dog", "--name", "dog")[0] == 0
    dog = Image.open(EXAMPLES / "dog" / "00.jpg")
    rows = []

    def bundle() -> Path:
        b = tmp / f"b{len(rows)}"
        shutil.copytree(pristine, b)
        return b

    def image_case(name: str, make) -> None:
        d = tmp / f"img{len(rows)}"
        d.mkdir()
        path = make(d)
        rows.append((f"image: {name}", *cli("find", pristine, path)))

    def save(d, name, im, **kw):
        im.save(d / name, **kw)
        return d / name

    buf = io.BytesIO()
    dog.save(buf, "JPEG")
    def write(d: Path, data: bytes) -> Path:
        (d / "a.jpg").write_bytes(data)
        return d / "a.jpg"

    image_case("zero-byte file", lambda d: write(d, b""))
    image_case("truncated JPEG", lambda d: write(d, buf.getvalue()[:5000]))
    image_case("text file named .jpg", lambda d: write(d, b"hello, not a photo\n"))
    image_case("PNG bomb (100000x100000 declared)", lambda d: png_bomb(d / "a.png") or d / "a.png")
    image_case("1x1 pixel", lambda d: save(d, "a.png", Image.new("RGB", (1, 1))))
    image_case("directory with no images", lambda d: d)
    image_case("16-bit PNG (accepted)", lambda d: save(d, "a.png", Image.fromarray(
        (np.asarray(dog.convert("L"), np.uint16) * 257))))
    image_case("CMYK JPEG (accepted)", lambda d: save(d, "a.jpg", dog.convert("CMYK")))
    image_case("RGBA PNG (accepted)", lambda d: save(d, "a.png", dog.convert("RGBA")))
    image_case("greyscale (accepted)", lambda d: save(d, "a.png", dog.convert("L")))

    def exif(d):
        e = Image.Exif()
        e[0x0112] = 6
        return save(d, "a.jpg", dog, exif=e.tobytes())
    image_case("EXIF-rotated (accepted, rotation honoured)", exif)

    dup = tmp / "dup"
    dup.mkdir()
    shutil.copy(EXAMPLES / "dog" / "00.jpg", dup / "a.jpg")
    shutil.copy(EXAMPLES / "dog" / "00.jpg", dup / "b.jpg")
    rows.append(("image: duplicate photos (enroll)", *cli("enroll", bundle(), dup, "--name", "x")))

    photos = sorted((EXAMPLES / "dog").glob("*.jpg"))

    def mask_case(name: str, make) -> None:
        d = tmp / f"masks{len(rows)}"
        d.mkdir()
        for p in photos:
            w, h = Image.open(p).size
            m = np.zeros((h, w), np.uint8)
            m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
            Image.fromarray(m).save(d / f"{p.stem}.png")
        make(d)
        rows.append((f"mask: {name}", *cli("personalize", EXAMPLES / "dog", "--name", "x", "--category", "dog",
                                           "--out", tmp / f"run{len(rows)}", "--negatives", EXAMPLES / "negatives",
                                           "--synth", "cutpaste", "--masks", d)))

    mask_case("wrong size", lambda d: Image.new("L", (10, 10), 255).save(d / "00.png"))
    mask_case("not binary", lambda d: Image.fromarray(np.random.default_rng(0).integers(
        0, 255, Image.open(photos[0]).size[::-1], np.uint8)).save(d / "00.png"))
    mask_case("empty", lambda d: Image.new("L", Image.open(photos[0]).size, 0).save(d / "00.png"))
    mask_case("missing for one photo", lambda d: (d / "01.png").unlink())

    def bundle_case(name: str, mutate, command=("info",)) -> None:
        b = bundle()
        mutate(b)
        photos = [EXAMPLES / "dog_heldout"] if command == ("find",) else []
        rows.append((f"bundle: {name}", *cli(*command, b, *photos)))

    def edit(fn):
        def apply(b):
            m = json.loads((b / "bundle.json").read_text())
            fn(m)
            (b / "bundle.json").write_text(json.dumps(m))
        return apply

    def flip_byte(b):
        data = bytearray((b / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 1
        (b / "model.onnx").write_bytes(bytes(data))

    def foreign_store(b):
        other = tmp / "other"
        if not other.exists():
            cli("export", "--backbone", "efficientnet_lite2", "--pretrained", "--out", other)
            cli("enroll", other, EXAMPLES / "dog", "--name", "dog")
        shutil.copy(other / "prototypes.safetensors", b / "prototypes.safetensors")

    bundle_case("missing model.onnx", lambda b: (b / "model.onnx").unlink())
    bundle_case("one changed byte in model.onnx", flip_byte)
    bundle_case("newer format version", edit(lambda m: m.update(format_version=7)))
    bundle_case("prototype store from another model", foreign_store, ("find",))
    bundle_case("corrupt prototype store",
                lambda b: (b / "prototypes.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{junk"), ("find",))
    bundle_case("bundle.json: wrong type", edit(lambda m: m["input"].update(size="320")))
    bundle_case("bundle.json: extra nesting", edit(lambda m: m["files"].update(model={"path": {"p": "model.onnx"}})))
    bundle_case("bundle.json: path ../../etc/passwd",
                edit(lambda m: m["files"]["model"].update(path="../../etc/passwd")))
    bundle_case("bundle.json: not JSON", lambda b: (b / "bundle.json").write_text("{oops"))

    foreign = tmp / "foreign"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    rows.append(("cli: unknown backbone",
                 *cli("export", "--backbone", "resnet9000", "--pretrained", "--out", tmp / "x")))
    rows.append(("cli: --device cuda without CUDA",
                 *cli("personalize", EXAMPLES / "dog", "--name", "x", "--category", "dog", "--out", tmp / "cu",
                      "--negatives", EXAMPLES / "negatives", "--device", "cuda")))
    rows.append(("cli: output directory exists and is not ours",
                 *cli("export", "--backbone", "efficientnet_lite0", "--pretrained", "--out", foreign)))
    assert (foreign / "thesis.docx").read_text() == "precious"

    print("| input | exit | message |")
    print("|---|---|---|")
    for name, code, message in rows:
        print(f"| {name} | {code} | {message.replace(str(tmp), '$TMP').replace('|', '/')} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = [{"input": n, "exit": c, "message": m.replace(str(tmp), "$TMP")} for n, c, m in rows]
    args.out.write_text(json.dumps(table, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
