"""How an app embeds the runtime: load a bundle once, then for each camera frame embed it once and
ask every question from those features. Needs only `pip install edge-persrep` (no torch).

    python examples/app_loop.py BUNDLE_DIR FRAME_OR_FOLDER...
"""

import sys
import time

from edge_persrep.runtime import EdgePersrepError, Finder, list_images, load_image


def main(bundle_dir: str, sources: list[str]) -> int:
    finder = Finder.open(bundle_dir)  # verifies checksums, refuses a store from another model
    print(f"loaded {bundle_dir}: {', '.join(finder.store.objects) or 'no objects enrolled'}")
    for path in list_images(sources):
        frame = load_image(path)  # in an app: the camera buffer as a PIL image or uint8 array
        start = time.perf_counter()
        (features,) = finder.embed([frame])  # the one model run per frame
        matches = finder.find(features, task="detect")
        ms = (time.perf_counter() - start) * 1000
        for m in matches:
            state = f"HERE at {m.box}" if m.present and m.box else ("here" if m.present else "not here")
            print(f"{path.name:24s} {m.name:12s} score {m.score:.3f}  {state}  ({ms:.0f} ms)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    try:
        sys.exit(main(sys.argv[1], sys.argv[2:]))
    except EdgePersrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
