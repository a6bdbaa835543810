"""The runtime's answers on real photos with the real pretrained Lite0."""

import dataclasses
import random
import shutil

import numpy as np
import pytest
from conftest import paste_scene

from edge_persrep.runtime import EdgePersrepError, Finder, PrototypeStore, StoreError, dense, list_images, load_image
from edge_persrep.runtime.finder import ImageFeatures, claimed_places, one_claim_per_place
from edge_persrep.runtime.metrics import box_iou


@pytest.fixture(scope="module")
def finder(pretrained_bundle, examples, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("f") / "b"
    shutil.copytree(pretrained_bundle, bundle)
    f = Finder.open(bundle)
    f.enroll("dog", list_images([examples / "dog"]), "dog", negatives=list_images([examples / "negatives"]))
    return f


def test_enrolment_is_persisted_with_photos_and_a_threshold(finder):
    reopened = Finder.open(finder.bundle.root)
    p = reopened.store.objects["dog"]
    assert p.embeddings.shape == (3, 1280) and p.targets.shape == (3, 1280) and len(p.photos) == 3
    assert 0.0 < p.threshold < 1.0


def test_an_object_enrolled_again_under_its_name_is_scored_with_its_new_references(finder, examples):
    """classify keeps the stacked references of every object between frames; replacing an object
    in the same store (same name, new photos) must not leave the old references in use."""
    from edge_persrep.runtime import PrototypeStore

    store = PrototypeStore(finder.store.model_sha256, finder.store.embedding_dim, finder.store.grid_dim)
    store.add(finder.store.objects["dog"])
    f = Finder(finder.bundle, store)
    (cat,) = f.embed([examples / "heldout_others" / "cat_00.jpg"])
    before = f.classify(cat)[0].global_score
    store.add(f.make_prototype("dog", [examples / "heldout_others" / "cat_00.jpg"], "cat"))  # now "dog" is this cat
    assert before < 0.9 and f.classify(cat)[0].global_score == pytest.approx(1.0, abs=1e-5)


def test_classify_separates_the_object_from_other_animals(finder, examples):
    held = finder.embed(list_images([examples / "dog_heldout"]))
    cat = finder.embed([examples / "heldout_others" / "cat_00.jpg"])
    dog_scores = [finder.classify(f)[0] for f in held]
    (cat_match,) = finder.classify(cat[0])
    assert all(m.present for m in dog_scores) and not cat_match.present
    assert min(m.score for m in dog_scores) > cat_match.score


def test_detect_finds_the_object_pasted_into_scenes(finder, examples):
    """The held-out dog photo pasted at a random place and size on photos without dogs: the box
    from the patch-similarity map must overlap the pasted region (mean IoU >= 0.45)."""
    backgrounds = list_images([examples / "backgrounds"])
    dogs = [load_image(p) for p in list_images([examples / "dog_heldout"])]
    rng = random.Random(0)
    ious = []
    for i, path in enumerate(backgrounds):
        side = rng.randint(120, 200)
        x, y = rng.randint(0, 384 - side), rng.randint(0, 384 - side)
        box = (x, y, x + side, y + side)
        (features,) = finder.embed([paste_scene(dogs[i % 2], load_image(path), box)])
        (match,) = finder.classify(features)
        match = finder.locate(features, match, with_mask=True)  # localize whether or not judged present
        assert match.box is not None and match.mask.shape == (384, 384)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        assert match.mask[int(cy), int(cx)], "the mask must cover the centre of the pasted dog"
        ious.append(box_iou(box, match.box))
    assert np.mean(ious) >= 0.45, ious


def test_retrieve_and_unknown_names(finder, examples):
    gallery = finder.embed(list_images([examples / "heldout_others", examples / "dog_heldout"]))
    ranked = finder.retrieve("dog", gallery)
    assert {ranked[0][0], ranked[1][0]} == {3, 4}  # the two held-out dog photos come first
    with pytest.raises(EdgePersrepError, match="not enrolled"):
        finder.classify(gallery[0], names=["mug"])


def test_empty_store_says_enroll_first(pretrained_bundle, examples):
    f = Finder.open(pretrained_bundle)
    (features,) = f.embed([examples / "dog" / "00.jpg"])
    with pytest.raises(StoreError, match="enroll"):
        f.classify(features)


def test_objects_enrolled_in_a_bundle_serve_as_negatives(finder):
    pytest.importorskip("torch")
    from edge_persrep.pipeline import gather_negatives

    identities, negatives = gather_negatives([], finder.bundle.root)
    assert len(negatives) == 3 and all(im.mode == "RGB" and max(im.size) <= 384 for im in negatives)
    assert identities == ["enrolled:dog"] * 3  # one enrolled object, one identity


def test_objects_enrolled_together_are_each_calibrated_against_all_the_others(bundle_copy, examples):
    """enroll_all: the first object's threshold counts the second as a negative, exactly as if the
    second had been enrolled first; enrolled one after another, the first one never sees it."""
    photos = list_images([examples / "negatives"])
    dog2, dog3 = [p for p in photos if p.name.startswith("dog2_")], [p for p in photos if p.name.startswith("dog3_")]
    negatives = [p for p in photos if p not in dog2 + dog3]
    together = Finder.open(bundle_copy)
    a, b = together.enroll_all([("dog2", dog2, "dog", negatives), ("dog3", dog3, "dog", negatives)])
    assert list(Finder.open(bundle_copy).store.objects) == ["dog2", "dog3"]  # saved once, both in

    def empty_store():
        return PrototypeStore(together.store.model_sha256, together.store.embedding_dim, together.store.grid_dim)

    alone = Finder(together.bundle, empty_store())
    alone.store.add(b)  # dog3 already in the store: the usual `enroll` counts it for dog2
    assert alone.make_prototype("dog2", dog2, "dog", negatives).threshold == pytest.approx(a.threshold, abs=1e-6)
    blind = Finder(together.bundle, empty_store())
    first = blind.make_prototype("dog2", dog2, "dog", negatives)  # enrolled first, one at a time: dog3 unseen
    assert first.threshold != pytest.approx(a.threshold, abs=1e-6)


def test_top_k_matches_a_full_sort():
    from edge_persrep.runtime.finder import top_k

    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(500, 8)).astype(np.float32)
    queries = rng.normal(size=(3, 8)).astype(np.float32)
    best = (gallery @ queries.T).max(axis=1)
    expected = list(np.argsort(-best, kind="stable")[:7])
    assert [i for i, _ in top_k(gallery, queries, 7)] == expected
    assert [i for i, _ in top_k(gallery[:5], queries, 10)] == list(np.argsort(-best[:5], kind="stable"))


def test_an_objects_score_is_the_mean_over_its_references_and_the_best_one_for_older_objects():
    """Hand-checked: a frame that matches all three references moderately (0.6 each) outscores one
    that matches a single reference well (0.8, the others 0.1) under "mean"; under "region" (the
    rule of objects enrolled before it) the single good match wins."""
    from edge_persrep.runtime.finder import over_references, per_object

    consistent, one_good = np.array([0.6, 0.6, 0.6]), np.array([0.8, 0.1, 0.1])
    assert over_references(consistent, "mean") == pytest.approx(0.6)
    assert over_references(one_good, "mean") == pytest.approx(1 / 3)
    assert over_references(one_good, "region") == over_references(one_good, "global") == pytest.approx(0.8)
    # two objects stacked: [0.2, 0.4] (mean) and [0.9] (region); and per window, the same rule per object
    assert per_object(np.array([0.2, 0.4, 0.9]), np.array([0, 2]), ["mean", "region"]) == pytest.approx([0.3, 0.9])
    windows = np.array([[0.2, 0.4, 0.9], [0.6, 0.0, 0.1]])
    np.testing.assert_allclose(per_object(windows, np.array([0, 2]), ["mean", "region"]), [[0.3, 0.9], [0.3, 0.1]])


def test_new_objects_are_scored_by_the_references_mean_and_a_store_read_back_keeps_each_rule(finder, tmp_path):
    from edge_persrep.runtime import PrototypeStore

    assert finder.store.objects["dog"].scoring == "mean"
    store = PrototypeStore(finder.store.model_sha256, finder.store.embedding_dim, finder.store.grid_dim)
    for rule in ("mean", "region", "global"):
        store.add(dataclasses.replace(finder.store.objects["dog"], name=f"dog_{rule}", scoring=rule))
    store.save(tmp_path / "store.safetensors")
    back = PrototypeStore.load(tmp_path / "store.safetensors", finder.store.model_sha256)
    assert [p.scoring for p in back.objects.values()] == ["mean", "region", "global"]


def test_classify_many_objects_equals_each_objects_own_rule(finder, examples):
    from edge_persrep.runtime import Prototype, PrototypeStore

    rng = np.random.default_rng(0)
    store = PrototypeStore(finder.bundle.model_sha256, 1280, 1280)
    for i in range(50):
        k = 1 + i % 4
        emb = rng.normal(size=(k, 1280)).astype(np.float32)
        box = rng.normal(size=(k, 1280)).astype(np.float32)
        store.add(Prototype(f"o{i}", "", emb / np.linalg.norm(emb, axis=1, keepdims=True),
                            np.ones((k, 1280), np.float32), box / np.linalg.norm(box, axis=1, keepdims=True), 0.0,
                            scoring=("mean", "region", "global")[i % 3]))
    many = Finder(finder.bundle, store)
    (features,) = many.embed([examples / "dog" / "00.jpg"])
    windows = [features.grid[y0:y1, x0:x1].reshape(-1, 1280).mean(axis=0)  # every window, by brute force
               for kh, kw in dense.window_sizes((10, 10)) for y0 in range(11 - kh) for x0 in range(11 - kw)
               for y1, x1 in [(y0 + kh, x0 + kw)]]
    windows = np.stack(windows) / np.linalg.norm(windows, axis=1, keepdims=True)
    for m in many.classify(features):
        p = store.objects[m.name]
        over = np.mean if p.scoring == "mean" else np.max
        assert m.global_score == pytest.approx(float(over(p.embeddings @ features.embedding)), abs=1e-6)
        assert m.region_score == pytest.approx(float(over(windows @ p.box_features.T, axis=1).max()), abs=1e-5)
        assert m.score == (m.global_score if p.scoring == "global" else max(m.global_score, m.region_score))


def test_find_localizes_only_objects_judged_present(finder, examples):
    held, cat = finder.embed([examples / "dog_heldout" / "03.jpg", examples / "heldout_others" / "cat_00.jpg"])
    (dog_match,) = finder.find(held, "segment")
    (cat_match,) = finder.find(cat, "segment")
    assert dog_match.present and dog_match.box is not None and dog_match.mask is not None
    assert not cat_match.present and cat_match.box is None and cat_match.mask is None


def test_a_small_dog_among_other_things_is_found_by_its_region(finder, examples):
    """The product's promise: the held-out dog in one cell of a 2x2 or 3x3 scene of other animals
    (look-alike corgis included) and household things. The paper's global score misses it every
    time (12 of 12 below the global-calibrated threshold); region scoring finds it, points at its
    cell, and says no to scenes without it. (The references' mean, the runtime's rule since 2026-12-05,
    finds it in 9 of 12 and points right in 12; the best reference found 12 and pointed right in 12:
    on this dog the mean is worse, over the benchmark's 21 objects better; README.)"""
    from edge_persrep.runtime.finder import SCENE_SIDE, compose_grid, scene_with

    negatives = list_images([examples / "negatives"])
    paper = finder.make_prototype("dog", list_images([examples / "dog"]), "dog", negatives=negatives, scoring="global")
    fillers = [load_image(p) for p in list_images([examples / "heldout_others",
                                                   examples / "backgrounds"])]
    found, found_by_global, pointed = 0, 0, 0
    for photo in list_images([examples / "dog_heldout"]):
        for n in (2, 3):
            for offset in (0, 2, 4):
                (features,) = finder.embed([scene_with(load_image(photo), fillers, n, offset=offset)])
                (match,) = finder.classify(features)
                found += match.present
                found_by_global += match.global_score >= paper.threshold
                cell, side = offset % (n * n), SCENE_SIDE // n
                x0, y0, x1, y1 = match.region_box
                pointed += ((x0 + x1) / 2 // side, (y0 + y1) / 2 // side) == (cell % n, cell // n)
    assert found_by_global == 0 and found >= 9 and pointed >= 11, (found_by_global, found, pointed)
    for n in (2, 3):
        for k in range(3):
            (features,) = finder.embed([compose_grid(fillers[k:] + fillers[:k], n, SCENE_SIDE)])
            assert not finder.classify(features)[0].present


def test_stores_from_before_region_scoring_keep_their_global_rule(finder, tmp_path):
    from conftest import write_format1_store

    from edge_persrep.runtime import PrototypeStore

    assert finder.store.objects["dog"].scoring == "mean"
    write_format1_store(finder.store, tmp_path / "old.npz", drop_scoring=True)  # as before region scoring
    old = Finder(finder.bundle, PrototypeStore.load(tmp_path / "old.npz", finder.bundle.model_sha256))
    from edge_persrep.runtime.finder import stored_photos

    (features,) = old.embed(stored_photos(finder.store.objects["dog"])[:1])
    (match,) = old.classify(features)
    assert old.store.objects["dog"].scoring == "global" and match.score == match.global_score


def test_enrolment_without_negatives_calibrates_on_the_references_alone(pretrained_bundle, examples):
    f = Finder(Finder.open(pretrained_bundle).bundle)
    p = f.make_prototype("dog", list_images([examples / "dog"]), "dog")
    assert p.scoring == "mean" and 0.0 < p.threshold < 1.0


def test_overlay_tints_a_red_object_in_another_colour_and_labels_it(tmp_path):
    from PIL import Image

    from edge_persrep.runtime import Match
    from edge_persrep.runtime.finder import overlay

    photo = Image.new("RGB", (200, 160), (120, 120, 120))
    photo.paste((230, 20, 20), (60, 40, 140, 120))  # a red object
    mask = np.zeros((160, 200), bool)
    mask[40:120, 60:140] = True
    out = np.asarray(Image.open(overlay(photo, Match("mug", 0.8123, True, box=(60, 40, 140, 120), mask=mask),
                                        tmp_path / "o.png")), np.int32)
    inside = out[80, 100]
    assert inside[2] > 80 and inside[0] < 200  # tinted towards blue, not red on red
    assert (out[140:, :] == 120).all()  # away from the object and its label, the photo is untouched
    label = out[40:60, 60:140]
    assert (label == 255).all(axis=-1).any() and (label == 0).all(axis=-1).any()  # white text on black


def test_a_port_written_from_the_format_doc_gets_the_runtimes_scores_and_decisions(finder, examples, tmp_path):
    """docs/bundle-format.md's classify rule, written again here from the doc alone with the
    `safetensors` library and plain onnxruntime (no edge_persrep code): same scores and `present`.
    A second dog, enrolled from two of the first one's photos, claims the same place on the dog's
    photos, so step 5 (one place, one look-alike) is ported and compared too."""
    import json

    import onnxruntime as ort
    from PIL import Image, ImageOps
    safetensors_numpy = pytest.importorskip("safetensors.numpy")

    root = tmp_path / "two_dogs"
    shutil.copytree(finder.bundle.root, root)
    runtime = Finder.open(root)
    dogs = list_images([examples / "dog"])
    runtime._save([runtime.make_prototype("dog_twin", dogs[:2], "dog", list_images([examples / "negatives"]),
                                          others=[])])
    manifest = json.loads((root / "bundle.json").read_text())
    tensors = safetensors_numpy.load((root / manifest["store"]).read_bytes())
    meta = json.loads(tensors["meta"].tobytes())
    assert meta["model_sha256"] == manifest["files"]["model"]["sha256"]
    session = ort.InferenceSession(str(root / manifest["files"]["model"]["path"]), providers=["CPUExecutionProvider"])
    size = manifest["input"]["size"]
    photos = list_images([examples / "dog_heldout", examples / "heldout_others"])
    withdrawn = 0
    for path in photos:
        photo = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        x = np.asarray(photo.resize((size, size), Image.BICUBIC), np.uint8)[None]
        e, grid = (a[0] for a in session.run(["embedding", "patch_grid"], {"image": x}))
        h, w, c = grid.shape
        sizes = list(dict.fromkeys((round(f * h), round(f * w)) for f in (0.3, 0.45, 0.6)))
        cells = [(x0, y, x0 + kw, y + kh) for kh, kw in sizes for y in range(h - kh + 1) for x0 in range(w - kw + 1)]
        windows = np.stack([grid[y0:y1, x0:x1].reshape(-1, c).mean(axis=0) for x0, y0, x1, y1 in cells])
        windows /= np.linalg.norm(windows, axis=1, keepdims=True)
        scores, over, boxes, window_scores, best = [], [], [], [], []
        for i, obj in enumerate(meta["objects"]):
            over_k = np.mean if obj["scoring"] == "mean" else np.max  # over the object's references
            g = float(over_k(tensors[f"o{i}.embeddings"] @ e))
            window_scores.append(over_k(windows @ tensors[f"o{i}.box_features"].T, axis=1))
            r = float(window_scores[-1].max())
            best.append(int(np.argmax(window_scores[-1])))
            scores.append(g if obj["scoring"] == "global" else max(g, r))
            over.append(scores[-1] >= obj["threshold"])
            boxes.append(cells[best[-1]] if r > g and obj["scoring"] != "global" else (0, 0, w, h))

        def area(b):
            return (b[2] - b[0]) * (b[3] - b[1])

        def same_place(a, b):
            inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
            return inter >= 0.5 * min(area(a), area(b))
        expected = runtime.classify(runtime.embed([path])[0])
        for i, obj in enumerate(meta["objects"]):
            def claims(k):  # k claims i's place: they overlap, or k scores at least i's score in i's region box
                return same_place(boxes[i], boxes[k]) or (meta["objects"][k]["scoring"] != "global"
                                                          and window_scores[k][best[i]] >= scores[i])
            rival = any(over[k] and meta["objects"][k]["category"] == obj["category"] and claims(k)
                        and (scores[k] > scores[i] or (scores[k] == scores[i] and k < i))
                        for k in range(len(scores)) if k != i)
            withdrawn += bool(over[i] and rival)
            assert obj["name"] == expected[i].name and scores[i] == pytest.approx(expected[i].score, abs=1e-5), path
            assert (over[i] and not rival) == expected[i].present, path
    assert withdrawn > 0  # step 5 decided something


def test_the_bundles_scorer_graph_gives_the_runtimes_scores_boxes_and_maps(finder, examples):
    """scorer.onnx (what apps in other languages run after the model) against Finder, on real
    photos and scenes, with four objects: two scored by their references' mean, one by the best
    reference (as enrolled before the mean), and one global-only. Three are dogs enrolled from the
    same photos, so on a dog photo they claim one place and only the best one is `present`."""
    import onnxruntime as ort

    from edge_persrep.runtime import PrototypeStore
    from edge_persrep.runtime.images import compose_grid

    scorer_path, _ = finder.bundle.scorer_entry
    session = ort.InferenceSession(str(scorer_path), providers=["CPUExecutionProvider"])
    negatives = list_images([examples / "negatives"])
    store = PrototypeStore(finder.store.model_sha256, finder.store.embedding_dim, finder.store.grid_dim)
    store.add(finder.store.objects["dog"])
    store.add(finder.make_prototype("thing", negatives[:2], "thing"))
    store.add(finder.make_prototype("dog_global", list_images([examples / "dog"]), "dog", scoring="global"))
    store.add(finder.make_prototype("dog_best", list_images([examples / "dog"]), "dog", negatives, scoring="region"))
    three = Finder(finder.bundle, store)
    others = [load_image(p) for p in list_images([examples / "heldout_others"])]
    photos = [load_image(p) for p in list_images([examples / "dog_heldout"])] + others[:3] \
        + [compose_grid([others[0], load_image(list_images([examples / "dog_heldout"])[0])] + others[1:3], 2, 640)]
    feats = three.embed(photos)
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {
        "embedding": np.stack([f.embedding for f in feats]), "patch_grid": np.stack([f.grid for f in feats]),
        **store.scorer_inputs()})))
    assert out["window_boxes"].shape == (138, 4)  # Lite0's 10x10 grid: 3x3, 4x4 and 6x6 windows
    presents, outscored = set(), set()
    for n, f in enumerate(feats):
        for j, m in enumerate(three.classify(f)):
            p = store.objects[m.name]
            assert out["global_score"][n, j] == pytest.approx(m.global_score, abs=1e-5)
            assert out["region_score"][n, j] == pytest.approx(m.region_score, abs=1e-5)
            assert out["score"][n, j] == pytest.approx(m.score, abs=1e-5) and out["present"][n, j] == m.present
            box = dense.cells_to_pixels(out["region_box"][n, j], f.grid.shape[:2], f.width, f.height)
            assert box == m.region_box
            np.testing.assert_allclose(out["similarity_map"][n, j], dense.similarity_map(f.grid, p.targets), atol=1e-5)
            anchor = dense.object_window(out["window_scores"][n, :, j], out["window_boxes"].astype(int))
            assert dense.cells_to_pixels(anchor, f.grid.shape[:2], f.width, f.height) == three._object_extent(f, p)
            presents.add(m.present)
            outscored.add(m.outscored_by is not None)
    assert presents == {True, False}  # both decisions were compared
    assert outscored == {True, False}  # and the look-alike rule both withdrew and kept a `present`


def test_the_score_at_the_place_decides_alike_in_finder_and_scorer_graph(finder):
    """A frame whose best windows for two look-alikes lie apart, where only "the better one scores
    higher in the other's window too" withdraws one (no real photo of the scorer test above has such
    a frame). Patch features: the left half is u, the right half 0.8 u + 0.6 v; cat A is u, cat B
    is v, the global embedding matches neither. A scores 1.0 (left), B 0.6 (right); in B's window
    A scores 0.8, so the right half is A too and B is withdrawn, in Finder and in scorer.onnx alike."""
    import onnxruntime as ort

    from edge_persrep.runtime import Prototype

    store = PrototypeStore(finder.store.model_sha256, finder.store.embedding_dim, finder.store.grid_dim)
    d, c = store.embedding_dim, store.grid_dim
    u, v, z = np.eye(c, dtype=np.float32)[:3]
    grid = np.tile(u, (10, 10, 1))
    grid[:, 5:] = 0.8 * u + 0.6 * v
    embedding = np.eye(d, dtype=np.float32)[3]
    for name, feature in (("cat_a", u), ("cat_b", v)):
        store.add(Prototype(name, "cat", np.eye(d, dtype=np.float32)[None, 4], z[None], feature[None], 0.5))
    cats = Finder(finder.bundle, store)
    a, b = cats.classify(ImageFeatures(embedding, grid, 320, 320))
    assert (a.score, b.score) == pytest.approx((1.0, 0.6), abs=1e-5)
    assert a.present and not b.present and b.outscored_by == "cat_a"
    # the places alone would keep both: A's best window lies in the left half, B's in the right
    assert a.region_box[2] <= 160 <= b.region_box[0]
    session = ort.InferenceSession(str(finder.bundle.scorer_entry[0]), providers=["CPUExecutionProvider"])
    (present,) = session.run(["present"], {"embedding": embedding[None], "patch_grid": grid[None],
                                           **store.scorer_inputs()})
    assert present[0].tolist() == [True, False]
    # the two cats side by side (left u, right v): in B's window A scores 0, so both stay
    grid = grid.copy()  # a new frame (the Finder keeps the last frame's pooled windows)
    grid[:, 5:] = v
    assert [m.present for m in cats.classify(ImageFeatures(embedding, grid, 320, 320))] == [True, True]
    (present,) = session.run(["present"], {"embedding": embedding[None], "patch_grid": grid[None],
                                           **store.scorer_inputs()})
    assert present[0].tolist() == [True, True]


def test_one_place_is_at_most_one_of_the_users_look_alikes():
    """finder.one_claim_per_place by hand: windows (x0, y0, x1, y1) in grid cells."""
    whole, left, right, top_left = (0, 0, 10, 10), (0, 0, 5, 10), (5, 0, 10, 10), (0, 0, 4, 4)
    # two cats at one place: the better one stays, the other is withdrawn in its favour
    assert one_claim_per_place([0.6, 0.7], [True, True], [whole, left], ["cat", "cat"]).tolist() == [1, -1]
    # the same two cats in two places of the frame: both stay
    assert one_claim_per_place([0.6, 0.7], [True, True], [left, right], ["cat", "cat"]).tolist() == [-1, -1]
    # a small window inside a large one is the same place (overlap of the smaller window's area)
    assert one_claim_per_place([0.6, 0.7], [True, True], [whole, top_left], ["cat", "cat"]).tolist() == [1, -1]
    # a look-alike under its own threshold takes nothing; another category never competes
    assert one_claim_per_place([0.6, 0.7], [True, False], [whole, whole], ["cat", "cat"]).tolist() == [-1, -1]
    assert one_claim_per_place([0.6, 0.7], [True, True], [whole, whole], ["cat", "dog"]).tolist() == [-1, -1]
    # equal scores: the earlier object wins; pairs are judged each on its own (no greedy chain):
    # 2 outscores 1 and 1 outscores 0 at one place, so both 0 and 1 go to the best one, 2
    assert one_claim_per_place([0.5, 0.5], [True, True], [whole, whole], ["cat", "cat"]).tolist() == [-1, 0]
    assert one_claim_per_place([0.5, 0.6, 0.7], [True] * 3, [whole] * 3, ["dog"] * 3).tolist() == [2, 2, -1]
    assert one_claim_per_place([], [], np.zeros((0, 4)), []).tolist() == []


def test_a_look_alike_that_scores_higher_at_my_place_takes_it():
    """one_claim_per_place's `at_place` (at[i, k]: k's score in i's best window), by hand. One cat
    fills the photo: the other cat's best window and the cat's lie apart (no overlap), but in the
    other cat's window the cat scores higher still, so that window shows the cat."""
    left, right = (0, 0, 5, 10), (5, 0, 10, 10)
    one_cat = np.array([[0.6, 0.65],   # in object 0's window, object 1 scores 0.65 >= 0.6
                        [0.5, 0.7]])
    assert one_claim_per_place([0.6, 0.7], [True, True], [left, right], ["cat", "cat"],
                               at_place=one_cat).tolist() == [1, -1]
    # two cats in two places, each scoring lower in the other's window: both stay
    two_cats = np.array([[0.6, 0.4], [0.3, 0.7]])
    assert one_claim_per_place([0.6, 0.7], [True, True], [left, right], ["cat", "cat"],
                               at_place=two_cats).tolist() == [-1, -1]
    # only a higher overall score can take a place: 0 scores higher in 1's window, but lower overall
    assert one_claim_per_place([0.6, 0.7], [True, True], [left, right], ["cat", "cat"],
                               at_place=np.array([[0.6, 0.4], [0.75, 0.7]])).tolist() == [-1, -1]
    # other categories and objects under their thresholds never compete
    assert one_claim_per_place([0.6, 0.7], [True, True], [left, right], ["cat", "dog"],
                               at_place=one_cat).tolist() == [-1, -1]
    assert one_claim_per_place([0.6, 0.7], [True, False], [left, right], ["cat", "cat"],
                               at_place=one_cat).tolist() == [-1, -1]


def test_an_objects_place_is_where_its_score_came_from():
    """finder.claimed_places: the best window where the region score decided, else the whole grid."""
    windows = np.array([[0, 0, 3, 3], [2, 2, 5, 5], [4, 4, 7, 7]])
    places = claimed_places(windows, global_scores=np.array([0.5, 0.2, 0.2]), region_scores=np.array([0.4, 0.6, 0.6]),
                            rules=["mean", "mean", "global"], grid_hw=(10, 12))
    assert places.tolist() == [[0, 0, 12, 10], [2, 2, 5, 5], [0, 0, 12, 10]]  # global won; region won; global-only


def test_the_look_alike_rule_can_be_turned_off(finder, examples):
    """Two dogs enrolled from the same photos: with the rule one of them is present on a dog photo
    (the other names it in `outscored_by`); with it off, both are, each at its own threshold."""
    store = PrototypeStore(finder.store.model_sha256, finder.store.embedding_dim, finder.store.grid_dim)
    store.add(finder.store.objects["dog"])
    dogs, negatives = list_images([examples / "dog"]), list_images([examples / "negatives"])
    store.add(finder.make_prototype("dog_twin", dogs[:2], "dog", negatives, others=[]))
    photo = finder.embed(list_images([examples / "dog_heldout"])[:1])[0]
    ruled = {m.name: m for m in Finder(finder.bundle, store).classify(photo)}
    alone = {m.name: m for m in Finder(finder.bundle, store, one_per_place=False).classify(photo)}
    assert alone["dog"].present and alone["dog_twin"].present
    winner, loser = sorted(ruled, key=lambda n: -ruled[n].score)
    assert ruled[winner].present and not ruled[loser].present and ruled[loser].outscored_by == winner
