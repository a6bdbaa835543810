"""`scorer.onnx`: the runtime's per-object scoring as a small ONNX graph, for apps in any language.

An app runs `model.onnx` on a photo, then this graph on the model's outputs and the store's tensors
(docs/bundle-format.md), and gets the same numbers as the Python runtime's `Finder.classify`
without re-implementing them: global, region and combined scores, `present`, the best window, and
the similarity maps and window scores that detection and segmentation start from. The graph is
built for one bundle's grid size (h x w: the windows are constants); the number of objects and
references is dynamic.

Inputs (M reference photos over all J objects, in the store's order):
    embedding [N, D], patch_grid [N, h, w, C]       the model's outputs
    reference_embeddings [M, D], reference_box_features [M, C], reference_targets [M, C]
    reference_object [M, J]   1 where reference m belongs to object j, else 0
    region_scoring [J]        1 for objects scored max(global, region), 0 for global only
    mean_scoring [J]          1 for objects whose references are averaged (scoring "mean"), 0 for
                              the best reference (scoring "region" or "global")
    thresholds [J]            each object's calibrated threshold
    same_category [J, J]      1 where objects i and j have the same category (1 on the diagonal)
Outputs:
    global_score, region_score, score [N, J] (float32)
    present [N, J] (bool)     score >= threshold, and no object of the same category that is
                              over its threshold with a higher score claims the same place (the
                              places, the best window where the region score decided, else the
                              whole frame, overlap; or it scores at least as high in this one's
                              best window: runtime/finder.claimed_places and one_claim_per_place)
    region_box [N, J, 4]      the best window, grid cells x0, y0, x1, y1 (exclusive), as float32
    window_scores [N, W, J]   every window against each object (its references' mean, or the best one)
    window_boxes [W, 4]       the windows, grid cells, as float32
    similarity_map [N, J, h, w]  each patch against each object's targets (its best reference)
"""

from __future__ import annotations

import numpy as np

from ..runtime import dense
from ..runtime.finder import SAME_PLACE

SCORER_OPSET = 17
NOT_MINE = -1.0e4  # added to a reference's cosine for the objects it does not belong to, before the max


def scorer_model(grid_height: int, grid_width: int, embedding_dim: int, grid_dim: int):
    """The scoring graph of a bundle whose patch grid is grid_height x grid_width x grid_dim."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w, d, c = grid_height, grid_width, embedding_dim, grid_dim
    membership, boxes = dense.window_matrix((h, w), tuple(dense.window_sizes((h, w))))
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("embedding", f32, ["N", d]),
              helper.make_tensor_value_info("patch_grid", f32, ["N", h, w, c]),
              helper.make_tensor_value_info("reference_embeddings", f32, ["M", d]),
              helper.make_tensor_value_info("reference_box_features", f32, ["M", c]),
              helper.make_tensor_value_info("reference_targets", f32, ["M", c]),
              helper.make_tensor_value_info("reference_object", f32, ["M", "J"]),
              helper.make_tensor_value_info("region_scoring", f32, ["J"]),
              helper.make_tensor_value_info("mean_scoring", f32, ["J"]),
              helper.make_tensor_value_info("thresholds", f32, ["J"]),
              helper.make_tensor_value_info("same_category", f32, ["J", "J"])]
    outputs = [helper.make_tensor_value_info("global_score", f32, ["N", "J"]),
               helper.make_tensor_value_info("region_score", f32, ["N", "J"]),
               helper.make_tensor_value_info("score", f32, ["N", "J"]),
               helper.make_tensor_value_info("present", TensorProto.BOOL, ["N", "J"]),
               helper.make_tensor_value_info("region_box", f32, ["N", "J", 4]),
               helper.make_tensor_value_info("window_scores", f32, ["N", len(boxes), "J"]),
               helper.make_tensor_value_info("window_boxes", f32, [len(boxes), 4]),
               helper.make_tensor_value_info("similarity_map", f32, ["N", "J", h, w])]
    constants = [numpy_helper.from_array(membership.astype(np.float32), "windows"),
                 numpy_helper.from_array(boxes.astype(np.float32), "window_boxes_const"),
                 numpy_helper.from_array(np.array([-1, h * w, c], np.int64), "flat_shape"),
                 numpy_helper.from_array(np.array([0, 0, h, w], np.int64), "map_shape"),
                 numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                 numpy_helper.from_array(np.array(-NOT_MINE, np.float32), "big"),
                 numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
                 numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
                 numpy_helper.from_array(np.array([0], np.int64), "first_axis"),
                 numpy_helper.from_array(np.array([1], np.int64), "second_axis"),
                 numpy_helper.from_array(np.array(SAME_PLACE, np.float32), "same_place_share"),
                 numpy_helper.from_array(np.array([0, 0, w, h], np.float32), "whole_frame"),
                 numpy_helper.from_array(np.array(0, np.int64), "zero_i"),
                 numpy_helper.from_array(np.array(1, np.int64), "one_i")]
    node = helper.make_node
    nodes = [
        # a [M, J] penalty: 0 where the reference is the object's, NOT_MINE elsewhere
        node("Sub", ["reference_object", "one"], ["not_mine"]),
        node("Mul", ["not_mine", "big"], ["penalty"]),
        # [M, J] weights of a mean over each object's references: 1 / K where the reference is its
        node("ReduceSum", ["reference_object", "first_axis"], ["refs_per_object"], keepdims=1),  # [1, J]
        node("Div", ["reference_object", "refs_per_object"], ["mean_weights"]),
        node("Cast", ["mean_scoring"], ["use_mean"], to=TensorProto.BOOL),
        # global: embedding . reference embedding, over the object's references (mean or max)
        node("Transpose", ["reference_embeddings"], ["ref_emb_t"], perm=[1, 0]),
        node("MatMul", ["embedding", "ref_emb_t"], ["global_all"]),  # [N, M]
        node("Unsqueeze", ["global_all", "last_axis"], ["global_all_1"]),  # [N, M, 1]
        node("Add", ["global_all_1", "penalty"], ["global_masked"]),  # [N, M, J]
        node("ReduceMax", ["global_masked"], ["global_max"], axes=[1], keepdims=0),
        node("MatMul", ["global_all", "mean_weights"], ["global_mean"]),  # [N, J]
        node("Where", ["use_mean", "global_mean", "global_max"], ["global_score"]),
        # region windows: mean of their patches, L2-normalised (the mean's scale cancels)
        node("Reshape", ["patch_grid", "flat_shape"], ["grid_flat"]),  # [N, hw, C]
        node("MatMul", ["windows", "grid_flat"], ["pooled"]),  # [N, W, C]
        node("ReduceSumSquare", ["pooled"], ["pooled_sq"], axes=[-1], keepdims=1),
        node("Sqrt", ["pooled_sq"], ["pooled_norm"]),
        node("Max", ["pooled_norm", "eps"], ["pooled_norm_safe"]),
        node("Div", ["pooled", "pooled_norm_safe"], ["windows_unit"]),
        node("Transpose", ["reference_box_features"], ["ref_box_t"], perm=[1, 0]),
        node("MatMul", ["windows_unit", "ref_box_t"], ["window_all"]),  # [N, W, M]
        node("Unsqueeze", ["window_all", "last_axis"], ["window_all_1"]),  # [N, W, M, 1]
        node("Add", ["window_all_1", "penalty"], ["window_masked"]),  # [N, W, M, J]
        node("ReduceMax", ["window_masked"], ["window_max"], axes=[2], keepdims=0),  # [N, W, J]
        node("MatMul", ["window_all", "mean_weights"], ["window_mean"]),  # [N, W, J]
        node("Where", ["use_mean", "window_mean", "window_max"], ["window_scores"]),
        node("ReduceMax", ["window_scores"], ["region_score"], axes=[1], keepdims=0),
        node("ArgMax", ["window_scores"], ["best_window"], axis=1, keepdims=0),  # [N, J], first on ties
        node("Gather", ["window_boxes_const", "best_window"], ["region_box"], axis=0),
        node("Identity", ["window_boxes_const"], ["window_boxes"]),
        # combined: max(global, region) where region scoring applies, else global
        node("Sub", ["region_score", "global_score"], ["gain"]),
        node("Relu", ["gain"], ["gain_pos"]),
        node("Mul", ["gain_pos", "region_scoring"], ["gain_used"]),
        node("Add", ["global_score", "gain_used"], ["score"]),
        node("GreaterOrEqual", ["score", "thresholds"], ["over_threshold"]),  # [N, J]
        # one place, one of the user's look-alikes (finder.one_claim_per_place): each object's place is
        # its best window where the region score decided, else the whole frame (finder.claimed_places)
        node("Greater", ["region_score", "global_score"], ["region_higher"]),
        node("Cast", ["region_scoring"], ["region_used"], to=TensorProto.BOOL),
        node("And", ["region_higher", "region_used"], ["by_region"]),
        node("Unsqueeze", ["by_region", "last_axis"], ["by_region_1"]),  # [N, J, 1]
        node("Where", ["by_region_1", "region_box", "whole_frame"], ["place"]),  # [N, J, 4]
        node("Split", ["place"], ["bx0", "by0", "bx1", "by1"], axis=2),  # each [N, J, 1]; pairs [N, i, k] below
        *[node("Transpose", [b], [b + "_k"], perm=[0, 2, 1]) for b in ("bx0", "by0", "bx1", "by1")],  # [N, 1, J]
        node("Max", ["bx0", "bx0_k"], ["ix0"]), node("Max", ["by0", "by0_k"], ["iy0"]),
        node("Min", ["bx1", "bx1_k"], ["ix1"]), node("Min", ["by1", "by1_k"], ["iy1"]),
        node("Sub", ["ix1", "ix0"], ["iw_raw"]), node("Relu", ["iw_raw"], ["iw"]),
        node("Sub", ["iy1", "iy0"], ["ih_raw"]), node("Relu", ["ih_raw"], ["ih"]),
        node("Mul", ["iw", "ih"], ["intersection"]),  # [N, J, J]
        node("Sub", ["bx1", "bx0"], ["bw"]), node("Sub", ["by1", "by0"], ["bh"]),
        node("Mul", ["bw", "bh"], ["area"]), node("Transpose", ["area"], ["area_k"], perm=[0, 2, 1]),
        node("Min", ["area", "area_k"], ["smaller"]),
        node("Mul", ["smaller", "same_place_share"], ["needed"]),
        node("GreaterOrEqual", ["intersection", "needed"], ["overlapping"]),
        node("Unsqueeze", ["score", "last_axis"], ["score_i"]),  # [N, J, 1]
        # or k scores at least i's score at i's place: at_place[n, i, k] = window_scores[n, best_window[n, i], k]
        node("Unsqueeze", ["best_window", "last_axis"], ["best_window_i"]),  # [N, J, 1]
        node("Shape", ["intersection"], ["pairs_shape"]),
        node("Expand", ["best_window_i", "pairs_shape"], ["best_window_ik"]),  # [N, J, J]
        node("GatherElements", ["window_scores", "best_window_ik"], ["window_at_place"], axis=1),
        node("Neg", ["big"], ["minus_big"]),
        node("Where", ["region_used", "window_at_place", "minus_big"], ["at_place"]),  # global-only k: none
        node("GreaterOrEqual", ["at_place", "score_i"], ["claims_by_score"]),
        node("Or", ["overlapping", "claims_by_score"], ["same_place"]),
        node("Unsqueeze", ["score", "second_axis"], ["score_k"]),  # [N, 1, J]
        node("Greater", ["score_k", "score_i"], ["higher"]),
        node("Equal", ["score_k", "score_i"], ["tied"]),
        node("Shape", ["thresholds"], ["j_shape"]),
        node("Squeeze", ["j_shape", "first_axis"], ["j_count"]),
        node("Range", ["zero_i", "j_count", "one_i"], ["order"]),  # [J]
        node("Unsqueeze", ["order", "last_axis"], ["order_i"]),  # [J, 1]
        node("Unsqueeze", ["order", "first_axis"], ["order_k"]),  # [1, J]
        node("Less", ["order_k", "order_i"], ["earlier"]),  # [J, J]: k enrolled before i
        node("And", ["tied", "earlier"], ["tie_won"]),
        node("Or", ["higher", "tie_won"], ["beats"]),
        node("Cast", ["same_category"], ["kin"], to=TensorProto.BOOL),
        node("Unsqueeze", ["over_threshold", "last_axis"], ["present_i"]),
        node("Unsqueeze", ["over_threshold", "second_axis"], ["present_k"]),
        node("And", ["same_place", "beats"], ["r1"]), node("And", ["r1", "kin"], ["r2"]),
        node("And", ["r2", "present_i"], ["r3"]), node("And", ["r3", "present_k"], ["rivals"]),
        node("Cast", ["rivals"], ["rivals_f"], to=f32),
        node("ReduceMax", ["rivals_f"], ["has_rival_f"], axes=[2], keepdims=0),  # [N, J]
        node("Cast", ["has_rival_f"], ["has_rival"], to=TensorProto.BOOL),
        node("Not", ["has_rival"], ["no_rival"]),
        node("And", ["over_threshold", "no_rival"], ["present"]),
        # similarity maps: each patch against the object's targets
        node("Transpose", ["reference_targets"], ["ref_tgt_t"], perm=[1, 0]),
        node("MatMul", ["grid_flat", "ref_tgt_t"], ["patch_all"]),  # [N, hw, M]
        node("Unsqueeze", ["patch_all", "last_axis"], ["patch_all_1"]),
        node("Add", ["patch_all_1", "penalty"], ["patch_masked"]),  # [N, hw, M, J]
        node("ReduceMax", ["patch_masked"], ["patch_best"], axes=[2], keepdims=0),  # [N, hw, J]
        node("Transpose", ["patch_best"], ["patch_best_t"], perm=[0, 2, 1]),  # [N, J, hw]
        node("Reshape", ["patch_best_t", "map_shape"], ["similarity_map"]),
    ]
    graph = helper.make_graph(nodes, "edge_persrep_scorer", inputs, outputs, constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", SCORER_OPSET)],
                              producer_name="edge-persrep")
    model.ir_version = 8  # readable by onnxruntime >= 1.10, onnxruntime-web and ORT Mobile
    onnx.checker.check_model(model)
    return model


def write_scorer(path, layout) -> dict:
    """Write the scoring graph for a bundle's FeatureLayout; returns its manifest entry."""
    from ..runtime.files import atomic_write_bytes, sha256_file

    model = scorer_model(layout.grid_height, layout.grid_width, layout.embedding_dim, layout.grid_dim)
    atomic_write_bytes(path, model.SerializeToString())
    return {"path": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "opset": SCORER_OPSET}
