"""Export an early-exit cascade (``zoo export --cascade cascade.json``) and run it back with onnxruntime.

Each member goes through :func:`export.export_model` with its usual fold and parity checks into ``OUT/member<k>/``
(always with a symbolic batch: the cascade hands later members smaller batches). ``OUT/cascade.json`` is the policy:
the fitted cascade.json with, per member, its artifacts (file and sha256, relative to ``OUT``), and the parity of the
exported cascade against the PyTorch cascade on real images. It is written last, atomically: a folder without it
is an export that did not finish.

:func:`run_cascade` is the small reference runner a deployment can copy: it needs numpy and onnxruntime only and
implements the policy of ``zoo/cascade.py`` (float64 probability averaging, windows, batch compaction).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

import zoo
from zoo.cascade import member_path, read_cascade_json, stage_outputs

from .api import ExportOptions, export_model
from .errors import ExportInputError, ParityError
from .formats import TOLERANCES
from .manifest import path_sha256, write_json_atomic

__all__ = ["export_cascade", "run_cascade"]

_RUNNABLE = ("onnx", "ort")  # what run_cascade executes, in order of preference
_EDGE_NOISE = 1e-4  # probabilities of an fp32 graph vs PyTorch differ by far less (fp32 parity tolerance 1e-4)


def _probe_images(cascade: zoo.Cascade, opts: ExportOptions, n: int = 64) -> torch.Tensor:
    """Real images (digits, or ``calib_data``) as the artifacts take them, for the cascade-level parity check."""
    from .data import load_images, normalize

    cfg = cascade.members[0].pretrained_cfg
    side = cascade.input_size[-1]
    data = load_images(opts.calib_data or "digits", side, cfg["crop_pct"], cfg["interpolation"], "val", limit=n)
    pixels = data.pixels
    if opts.fold_input_norm:
        return pixels * opts.pixel_range
    return normalize(pixels, cfg["mean"], cfg["std"])


def export_cascade(
    cascade_json: str | os.PathLike, out: str | os.PathLike, options: ExportOptions | None = None
) -> dict[str, Any]:
    """Export every member of a fitted cascade and write the policy ``OUT/cascade.json``.

    Args:
        cascade_json: written by ``zoo cascade fit``.
        out: output folder.
        options: export settings for every member (``dynamic_batch`` is forced on; ``onnx`` is always built, since
            :func:`run_cascade` executes it).

    Returns:
        The policy written to ``OUT/cascade.json``.

    Raises:
        zoo.CascadeError: bad cascade.json, missing checkpoint or sha256 mismatch.
        ExportInputError / FoldCheckError / ParityError: a member could not be exported, or the exported cascade
            disagrees with the PyTorch cascade beyond the ONNX tolerance.
    """
    src = Path(cascade_json)
    spec = read_cascade_json(src)
    cascade = zoo.Cascade.from_json(src)  # checks every checkpoint's sha256
    opts = options or ExportOptions()
    formats = opts.formats if "onnx" in opts.formats else ("onnx", *opts.formats)
    opts = dataclasses.replace(opts, formats=formats, dynamic_batch=True)
    out = Path(out)
    members = []
    for k, member in enumerate(spec["members"]):
        ckpt = member_path(member, src.parent).resolve()
        print(f"member {k}: {ckpt}", flush=True)
        name = member.get("model") or cascade.members[k].pretrained_cfg["architecture"]
        res = export_model(name, out / f"member{k}", opts, checkpoint=ckpt)
        if not res.ok:
            raise ExportInputError(f"member {k}: {', '.join(f'{f}: {e}' for f, e in res.failed.items())}")
        artifacts = {
            fmt: [{"file": f"member{k}/{f['file']}", "sha256": f["sha256"]} for f in rec.get("files", [])]
            for fmt, rec in res.formats.items()
            if rec["status"] == "ok" and rec.get("files")
        }
        members.append({**member, "checkpoint": str(ckpt), "artifacts": artifacts})
    policy = {
        **spec,
        "members": members,
        "exported_from": str(src.resolve()),
        "export_options": dataclasses.asdict(opts),
    }
    tmp = out / ".cascade.partial.json"  # run_cascade needs a policy to check against; replaced by the final one
    write_json_atomic(tmp, policy)
    try:
        policy["parity"] = _parity(cascade, out, tmp, _probe_images(cascade, opts))
    finally:
        tmp.unlink(missing_ok=True)
    write_json_atomic(out / "cascade.json", policy)
    return policy


def _parity(cascade: zoo.Cascade, out: Path, policy_path: Path, x: torch.Tensor) -> dict[str, Any]:
    """Exported vs PyTorch cascade on real images: the same exits, and the logits within the ONNX fp32 tolerance
    (relative to the largest logit). An exit may differ only for a score within float32 noise of a window's edge
    (windows are quantiles of real scores, so an image can sit exactly on one)."""
    ref = cascade(x)
    logits, stage = run_cascade(out, x.numpy(), policy=policy_path)
    ref_stage, ref_l = ref.exit_stage.numpy(), ref.logits.numpy()
    same = stage == ref_stage
    with torch.no_grad():
        _, conf = stage_outputs([m(x) for m in cascade.members], cascade.score)
    off_edge = [
        i
        for i in np.flatnonzero(~same)
        if min(abs(float(conf[k, i]) - e) for k in range(min(stage[i], ref_stage[i]) + 1) for e in cascade.windows[k])
        > _EDGE_NOISE
    ]
    err = float(np.abs(logits[same] - ref_l[same]).max() / max(np.abs(ref_l[same]).max(), 1e-12)) if same.any() else 0
    tol = TOLERANCES["fp32"]
    record = {"images": len(x), "exits_differ": int((~same).sum()), "logit_error": err, "tol": tol}
    if err > tol or off_edge:
        raise ParityError("cascade", err, tol, f"{len(off_edge)} of {len(x)} exits differ away from a window edge")
    return record


def _session(folder: Path, member: dict[str, Any], k: int, threads: int | None) -> Any:
    from .onnx_export import ort_session

    for fmt in _RUNNABLE:
        files = member.get("artifacts", {}).get(fmt)
        if files:
            path = folder / files[0]["file"]
            if not path.is_file():
                raise ExportInputError(f"member {k}: artifact {path} is missing")
            if path_sha256(path) != files[0]["sha256"]:
                raise ExportInputError(f"member {k}: {path} does not match the sha256 of the policy (changed?)")
            return ort_session(path, threads)
    raise ExportInputError(f"member {k} has no {' or '.join(_RUNNABLE)} artifact in the policy")


def _scores(probs: np.ndarray, score: str) -> np.ndarray:
    if score == "entropy":
        ent = -(probs * np.log(np.maximum(probs, np.finfo(np.float64).tiny))).sum(-1)
        return 1.0 - ent / np.log(probs.shape[-1])
    return probs.max(-1)


def run_cascade(
    folder: str | os.PathLike, images: Any, threads: int | None = None, policy: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported cascade with onnxruntime, following ``folder/cascade.json``.

    Args:
        folder: what ``zoo export --cascade`` wrote.
        images: (N, C, H, W) float32, as the members' artifacts take them (their manifests' ``preprocessing``).
        threads: onnxruntime intra-op threads.
        policy: another policy file to follow (default ``folder/cascade.json``).

    Returns:
        ``(logits (N, C) float32, exit_stage (N,) int64)``: log of the averaged probabilities of the stages each image
        reached, and the 0-based stage it exited at.
    """
    folder = Path(folder)
    path = Path(policy) if policy else folder / "cascade.json"
    if not path.is_file():
        raise ExportInputError(f"{path} not found: not a finished zoo export --cascade folder")
    spec = json.loads(path.read_text())
    sessions = [_session(folder, m, k, threads) for k, m in enumerate(spec["members"])]
    windows, score = [tuple(w) for w in spec["windows"]], spec["score"]
    x = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
    n = x.shape[0]
    out: np.ndarray | None = None
    stage = np.full(n, len(sessions) - 1, dtype=np.int64)
    idx = np.arange(n)
    prob_sum = score_sum = None
    for k, sess in enumerate(sessions):
        logits = sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True)
        prob_sum = p if prob_sum is None else prob_sum + p
        s = _scores(p, "msp" if score == "ensemble_msp" else score)
        score_sum = s if score_sum is None else score_sum + s
        avg = prob_sum / (k + 1)
        conf = _scores(avg, "msp") if score == "ensemble_msp" else score_sum / (k + 1)
        leave = np.ones(len(idx), bool) if k == len(windows) else (conf < windows[k][0]) | (conf > windows[k][1])
        if out is None:
            out = np.empty((n, p.shape[1]), np.float32)
        out[idx[leave]] = np.log(avg[leave]).astype(np.float32)
        stage[idx[leave]] = k
        stay = ~leave
        if not stay.any():
            break
        idx, x, prob_sum, score_sum = idx[stay], x[stay], prob_sum[stay], score_sum[stay]
    return out, stage


def main_cascade(cascade_json: str, out: str, opts: ExportOptions) -> int:
    """``zoo export --cascade``: export, then print where the policy and the members are."""
    policy = export_cascade(cascade_json, out, opts)
    par = policy["parity"]
    print(f"cascade of {len(policy['members'])} members exported to {out}")
    print(
        f"parity vs the PyTorch cascade on {par['images']} images: {par['exits_differ']} exits differ (allowed only "
        f"at a window's edge), logits rel. error {par['logit_error']:.2e} (tol {par['tol']:g})"
    )
    print(f"policy: {Path(out) / 'cascade.json'}; run it with export.run_cascade({str(out)!r}, images)")
    return 0
