"""Every (architecture, tag) pair in open_clip's registry: the worker builds the model and the image transform
the weights were trained with, whether given as the tag or as the file the tag resolves to. No download.

The expected values are derived here from open_clip's own data and code, not from the worker's helpers:
the model config straight from open_clip's JSON file, the preprocessing by open_clip's own merge
(`merge_preprocess_dict`, what `create_model` does with a tag), QuickGELU as the tag's pretrained config
states it (open_clip 3.3 only *warns* when the two disagree: `create_model_and_transforms(arch, pretrained=tag)`
then builds GELU for RN50/yfcc15m; heeding the warning is `force_quick_gelu=True`, which is what is expected).
"""
import json
import warnings
from dataclasses import asdict
from pathlib import Path

import open_clip
import open_clip.factory
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

from worker.compute.load_settings import LoadOverrides
from worker.compute.models import build_model, preprocess_for, resolve_settings, tag_of_file

CONFIGS = Path(open_clip.__file__).parent / "model_configs"
PAIRS = open_clip.list_pretrained()
DEFAULTS = {"quick_gelu": False, **{k: v for k, v in asdict(PreprocessCfg()).items()
                                    if k in ("mean", "std", "interpolation", "resize_mode")}}


def expected(arch: str, tag: str) -> dict:
    """What the weights of (arch, tag) were trained with, from open_clip's registry and JSON config."""
    pretrained = open_clip.pretrained._PRETRAINED[arch][tag]
    model_cfg = json.loads((CONFIGS / f"{arch}.json").read_text())
    pp = merge_preprocess_dict(PreprocessCfg(), pretrained)
    quick = pretrained["quick_gelu"] if "quick_gelu" in pretrained else model_cfg.get("quick_gelu", False)
    return {"quick_gelu": quick, "mean": tuple(pp["mean"]), "std": tuple(pp["std"]),
            "interpolation": pp["interpolation"], "resize_mode": pp["resize_mode"],
            "image_size": model_cfg["vision_cfg"]["image_size"]}


def files_of(arch: str, tag: str) -> list[Path]:
    """Where the tag's weights land: the Hugging Face cache layout, and OpenAI's URL file name."""
    pretrained = open_clip.pretrained._PRETRAINED[arch][tag]
    repo, _, filename = pretrained["hf_hub"].partition("/")[2].partition("/")
    org = pretrained["hf_hub"].split("/")[0]
    hub = Path("/hub") / f"models--{org}--{repo}" / "snapshots" / "abc123" / (filename or "open_clip_model.safetensors")
    url = pretrained.get("url", "")
    return [hub] + ([Path("/ckpt") / url.rsplit("/", 1)[-1]] if url else [])


def test_every_registry_pair_gets_its_trained_settings_by_tag_and_by_file():
    wrong, non_default, quick = [], 0, 0
    for arch, tag in PAIRS:
        want = expected(arch, tag)
        got = asdict(resolve_settings(arch, tag, None, LoadOverrides()))
        if got != want:
            wrong.append((arch, tag, "tag", got, want))
        for path in files_of(arch, tag):
            found = tag_of_file(arch, path)
            by_file = asdict(resolve_settings(arch, found, None, LoadOverrides()))
            if by_file != want:
                wrong.append((arch, tag, str(path), found, by_file))
        non_default += any(want[k] != v for k, v in DEFAULTS.items())
        quick += want["quick_gelu"]
    assert not wrong, f"{len(wrong)} mismatches over {len(PAIRS)} pairs, e.g. {wrong[:3]}"
    assert len(PAIRS) > 150 and quick >= 27  # 196 pairs and 54 QuickGELU ones in open_clip 3.3
    print(f"{len(PAIRS)} pairs, {non_default} with non-default settings, {quick} with QuickGELU")


# A few pairs built for real (on the meta device: no memory, no weights) on both sides, one per kind of
# set-up: QuickGELU not in the model config, mean/std 0.5, squash, a timm tower, CLIPA's bilinear, ImageNet stats.
SAMPLE = [("RN50", "yfcc15m"), ("ViT-L-14", "laion2b_s32b_b82k"), ("ViT-H-14", "dfn5b"),
          ("ViT-B-16-SigLIP", "webli"), ("ViT-L-14-CLIPA", "datacomp1b"), ("RN50-quickgelu", "openai")]


@pytest.mark.parametrize("arch, tag", SAMPLE)
def test_the_worker_builds_what_open_clip_builds_for_the_tag(monkeypatch, arch, tag):
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *a, **k: "")  # the tag, no weights
    pretrained = open_clip.pretrained._PRETRAINED[arch][tag]
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("error")  # open_clip's QuickGELU-mismatch warning would fail the test
        theirs, _, their_transform = open_clip.create_model_and_transforms(
            arch, pretrained=tag, device="meta", force_quick_gelu=pretrained.get("quick_gelu", False))
        ours = build_model(arch, resolve_settings(arch, tag, None, LoadOverrides()), "meta")
    assert repr(ours) == repr(theirs)  # every module and activation (QuickGELU or GELU) alike
    assert ours.visual.preprocess_cfg == theirs.visual.preprocess_cfg
    assert repr(preprocess_for(ours)) == repr(their_transform)
    assert repr(their_transform) == repr(image_transform_v2(PreprocessCfg(**theirs.visual.preprocess_cfg), False))
