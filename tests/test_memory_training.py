"""Making the memory carry information: given previous masks (training and corrections), clips at the cine's own
frame step with time reversal, and corrections carried through a cine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.corrections import segment_with_corrections
from scripts.data import RandClipd, SampleClipd
from scripts.gdkvm import GDKVM
from scripts.training import IGNORE_LABEL, PrepareClipBatch, SupervisedFramesLoss, given_true_masks, perturb_mask

torch.set_num_threads(2)


def small_net(classes: int = 2) -> GDKVM:
    torch.manual_seed(0)
    return GDKVM(size="small", out_channels=classes).eval()


def plain_loop(net: GDKVM, video: torch.Tensor, masks: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Reference: step frame by frame; after a flagged frame the given mask replaces the previous mask."""
    state, outputs = None, []
    for t in range(video.shape[-1]):
        logits, state = net.step(video[..., t], state)
        outputs.append(logits)
        rows = []
        for b in range(video.shape[0]):
            prev = masks[b : b + 1, ..., t] if flags[b, t] else None
            single = type(state)(state.memory[b : b + 1], state.prev_prob[b : b + 1])
            rows.append(net.give_mask(single, prev) if prev is not None else single)
        state = type(state)(torch.cat([r.memory for r in rows]), torch.cat([r.prev_prob for r in rows]))
    return torch.stack(outputs, dim=-1)


@torch.no_grad()
def test_given_masks_replace_the_previous_mask_as_a_plain_loop_does() -> None:
    net = small_net(classes=4)
    video = torch.rand(2, 1, 36, 44, 5)
    masks = torch.rand(2, 3, 36, 44, 5)
    flags = torch.tensor([[False, True, False, True, False], [True, False, False, False, False]])
    given = net(video, masks, flags)
    torch.testing.assert_close(given, plain_loop(net, video, masks, flags), rtol=0, atol=1e-5)
    plain = net(video)
    torch.testing.assert_close(given[0, ..., :2], plain[0, ..., :2], rtol=0, atol=0)  # causal: before the mask
    assert (given[0, ..., 2] - plain[0, ..., 2]).abs().max() > 0  # the frame after it sees the given mask
    assert torch.equal(net(video, masks, torch.zeros(2, 5, dtype=torch.bool)), plain)  # nothing given: plain


def test_given_masks_checked() -> None:
    net = small_net()
    video = torch.rand(1, 1, 32, 32, 3)
    with pytest.raises(ValueError, match="pass both or neither"):
        net(video, torch.rand(1, 1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"given_masks_BNHWT must be \[B, N, H, W, T\]"):
        net(video, torch.rand(1, 2, 32, 32, 3), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="give_mask expects"):
        net.give_mask(net.init_state(1, 32, 32), torch.rand(1, 32, 32))


@torch.no_grad()
def test_given_masks_in_torchscript() -> None:
    net = small_net()
    scripted = torch.jit.script(net)
    video, masks = torch.rand(1, 1, 32, 32, 3), torch.rand(1, 1, 32, 32, 3)
    flags = torch.tensor([[True, False, False]])
    torch.testing.assert_close(scripted(video, masks, flags), net(video, masks, flags), rtol=0, atol=1e-6)


def cine(frames: int = 12) -> dict:
    flags = np.isin(np.arange(frames), [2, 9])
    image = MetaTensor(torch.arange(frames, dtype=torch.float32).view(1, 1, 1, frames).expand(1, 4, 4, frames))
    return {
        "image": image,
        "label": torch.zeros(1, 4, 4, frames, dtype=torch.uint8),
        "label_frames": flags,
        "occluded": np.arange(frames, dtype=np.int8) % 2,
        "ed_index": 2,
        "es_index": min(9, frames - 1),
    }


def test_rand_clip_takes_consecutive_frames_at_the_cines_step() -> None:
    clip = RandClipd(num_frames=5, consecutive=True)
    clip.set_random_state(0)
    starts = set()
    for _ in range(40):
        out = clip(cine())
        order = out["image"][0, 0, 0].tolist()
        assert np.diff(order).tolist() == [1.0] * 4  # consecutive, forward
        starts.add(order[0])
        assert out["frame_indices"].tolist() == order
        assert out["occluded"].tolist() == [int(f) % 2 for f in order]
        assert out["label_frames"].tolist() == [f in (2, 9) for f in order]
        assert out["ed_index"] == (order.index(2) if 2 in order else -1)
        assert out["es_index"] == (order.index(9) if 9 in order else -1)
    assert starts == set(range(8))  # every start from 0 to 12 - 5
    short = RandClipd(num_frames=12, consecutive=True)
    short.set_random_state(2)
    for _ in range(10):  # a shorter cine: forwards and backwards in turn, always num_frames (batches collate)
        order = short(cine(6))["image"][0, 0, 0].tolist()
        assert len(order) == 12 and set(order) == set(range(6))
        assert all(abs(b - a) == 1 for a, b in zip(order, order[1:]))


def test_rand_clip_time_reversal() -> None:
    clip = RandClipd(num_frames=12, consecutive=False, reverse_prob=0.5)
    clip.set_random_state(1)
    seen = set()
    for _ in range(30):
        out = clip(cine())
        order = tuple(out["image"][0, 0, 0].tolist())
        seen.add(order == tuple(range(12))[::-1])
        if order[0] == 11:
            assert (out["ed_index"], out["es_index"]) == (9, 2)
            assert out["label_frames"].tolist() == cine()["label_frames"][::-1].tolist()
    assert seen == {True, False}
    unchanged = RandClipd(num_frames=12, consecutive=False, reverse_prob=0.0)(cine())
    assert unchanged["image"][0, 0, 0].tolist() == list(range(12))


def test_rand_clip_bounce_turns_at_the_ends() -> None:
    clip = RandClipd(num_frames=8, consecutive=True, bounce=True)
    clip.set_random_state(4)
    turned, firsts = False, set()
    for _ in range(150):
        order = clip(cine(12))["image"][0, 0, 0].tolist()
        assert len(order) == 8 and all(abs(b - a) == 1 for a, b in zip(order, order[1:]))
        turned |= any((b - a) != (c - b) for a, b, c in zip(order, order[1:], order[2:]))
        firsts.add(order[0])
    assert turned and firsts == set(range(12))  # contraction and filling in one clip; every frame can start one


def test_sample_clip_whole_keeps_the_cine() -> None:
    out = SampleClipd(num_frames=4, mode="whole")(cine())
    assert out["image"].shape[-1] == 12 and (out["ed_index"], out["es_index"]) == (2, 9)
    with pytest.raises(ValueError, match="mode must be"):
        SampleClipd(mode="consecutive")


def test_given_true_masks_only_after_annotated_frames() -> None:
    torch.manual_seed(0)
    label = torch.zeros(3, 1, 16, 16, 6, dtype=torch.long)
    label[..., 4:12, 4:12, :] = 1
    label[..., 0:3, 0:3, :] = 2
    annotated = torch.tensor([[True] * 6, [True, False, True, False, True, False], [False] * 6])
    masks, flags = given_true_masks(label, annotated, num_objects=2, prob=1.0, perturb_prob=0.0)
    assert masks.shape == (3, 2, 16, 16, 6)
    assert flags.tolist() == [[True] * 5 + [False], [True, False, True, False, True, False], [False] * 6]
    torch.testing.assert_close(masks[:, 0], (label[:, 0] == 1).float())
    torch.testing.assert_close(masks[:, 1], (label[:, 0] == 2).float())
    _, none = given_true_masks(label, annotated, num_objects=2, prob=0.0, perturb_prob=0.0)
    assert not none.any()


def test_empty_previous_masks_drawn_where_no_true_mask_is() -> None:
    torch.manual_seed(1)
    label = torch.ones(2, 1, 8, 8, 5, dtype=torch.long)
    annotated = torch.tensor([[True, True, False, False, True], [False] * 5])
    masks, flags = given_true_masks(label, annotated, num_objects=1, prob=1.0, perturb_prob=0.0, empty_prob=1.0)
    assert flags.tolist() == [[True] * 4 + [False], [True] * 4 + [False]]  # true where annotated, else empty
    assert masks[0, ..., :2].eq(1).all() and masks[0, ..., 2:4].eq(0).all() and masks[1].eq(0).all()
    _, none = given_true_masks(label, annotated, num_objects=1, prob=0.0, perturb_prob=0.0, empty_prob=0.0)
    assert not none.any()


def test_perturbed_mask_is_a_rough_copy() -> None:
    torch.manual_seed(3)
    mask = torch.zeros(1, 32, 32)
    mask[0, 10:22, 8:20] = 1
    for _ in range(10):
        rough = perturb_mask(mask)
        overlap = (rough * mask).sum() * 2 / (rough.sum() + mask.sum())
        assert not torch.equal(rough, mask) and 0.4 < overlap < 1.0
        assert set(rough.unique().tolist()) <= {0.0, 1.0}


def test_perturb_px_sets_how_rough_the_given_masks_are() -> None:
    """``perturb_px`` (config ``given_mask_perturb_px``): the masks handed over are grown or shrunk by up to that many
    pixels; the default 2 never moves a border by more than 2 (plus the shift)."""
    mask = torch.zeros(1, 48, 48)
    mask[0, 12:36, 14:34] = 1
    area = float(mask.sum())

    def area_changes(**kwargs) -> list[float]:
        torch.manual_seed(0)
        return [abs(float(perturb_mask(mask, max_shift=0, **kwargs).sum()) - area) for _ in range(40)]

    side = 2 * (24 + 20)  # the border's length: a 1 px change of the border moves about this many pixels
    assert max(area_changes()) <= 2 * side + 16
    assert max(area_changes(max_radius=5)) > 3 * side
    label = torch.zeros(1, 1, 48, 48, 6, dtype=torch.long)
    label[0, 0, 12:36, 14:34] = 1
    annotated = torch.ones(1, 6, dtype=torch.bool)
    torch.manual_seed(1)
    rough, _ = given_true_masks(label, annotated, num_objects=1, prob=1.0, perturb_prob=1.0, perturb_px=6)
    assert any(abs(float(rough[0, 0, ..., t].sum()) - area) > 3 * side for t in range(5))
    with pytest.raises(ValueError, match="perturb_px"):
        PrepareClipBatch(given_mask_prob=0.5, perturb_px=0)


def test_prepare_clip_batch_hands_given_masks_to_the_inferer() -> None:
    batch = {
        "image": torch.rand(2, 1, 16, 16, 5),
        "label": torch.ones(2, 1, 16, 16, 5, dtype=torch.uint8),
        "label_frames": torch.ones(2, 5, dtype=torch.bool),
    }
    assert len(PrepareClipBatch()(batch)) == 2  # the paper's recipe: (image, label) as before
    torch.manual_seed(0)
    image, label, args, kwargs = PrepareClipBatch(mode="first_last", given_mask_prob=1.0)(batch)
    assert args == () and set(kwargs) == {"given_masks_BNHWT", "given_frames_BT"}
    assert kwargs["given_frames_BT"][:, :-1].all() and not kwargs["given_frames_BT"][:, -1].any()
    assert (label[..., 1:-1] == IGNORE_LABEL).all()  # supervision unchanged by the given masks
    net = small_net()
    with torch.no_grad():
        assert net(image, **kwargs).shape == (2, 2, 16, 16, 5)


def test_first_frame_weight_counts_each_clips_first_frame_w_times() -> None:
    """The loss with first_frame_weight w is the plain loss over the frames with every first frame repeated w times."""
    from monai.losses import DiceCELoss

    torch.manual_seed(1)
    pred = torch.randn(2, 2, 8, 8, 5)
    label = (torch.rand(2, 1, 8, 8, 5) > 0.5).long()
    label[1, ..., 3] = IGNORE_LABEL  # an unsupervised frame stays out
    inner = DiceCELoss(to_onehot_y=True, softmax=True)
    weighted = SupervisedFramesLoss(inner, first_frame_weight=3.0)(pred, label)
    frames = [(b, t) for b in range(2) for t in range(5) if not (b == 1 and t == 3)]
    frames += [(b, 0) for b in range(2)] * 2  # each first frame twice more
    stacked_pred = torch.stack([pred[b, ..., t] for b, t in frames])
    stacked_label = torch.stack([label[b, ..., t] for b, t in frames])
    assert torch.allclose(weighted, inner(stacked_pred, stacked_label), atol=1e-6)
    assert torch.allclose(SupervisedFramesLoss(inner)(pred, label), SupervisedFramesLoss(inner, 1.0)(pred, label))
    assert not torch.allclose(weighted, SupervisedFramesLoss(inner)(pred, label))
    with pytest.raises(ValueError, match="first_frame_weight"):
        SupervisedFramesLoss(inner, first_frame_weight=0.5)


@torch.no_grad()
def test_corrections_carry_forward_and_backward() -> None:
    from scripts.corrections import forward_weights

    net = small_net()
    video = torch.rand(1, 1, 32, 32, 8)
    drawn = torch.zeros(32, 32, 8, dtype=torch.long)
    drawn[8:24, 10:22, :] = 1
    logits = segment_with_corrections(net, video, drawn, [2, 5])
    assert torch.equal(logits.argmax(1)[0][..., [2, 5]], drawn[..., [2, 5]])  # kept exactly as drawn
    masks = (drawn == 1).float()[None, None]
    flags = torch.tensor([[False, False, True, False, False, True, False, False]])
    forward = torch.softmax(net(video, masks, flags), 1)
    backward = torch.softmax(net(video.flip(-1), masks.flip(-1), flags.flip(-1)), 1).flip(-1)
    prob = logits.exp()
    torch.testing.assert_close(prob[..., [6, 7]], forward[..., [6, 7]], rtol=0, atol=1e-6)  # after: forward only
    torch.testing.assert_close(prob[..., [0, 1]], backward[..., [0, 1]], rtol=0, atol=1e-6)  # before: backward only
    torch.testing.assert_close(prob[..., 3], forward[..., 3] * 2 / 3 + backward[..., 3] / 3, rtol=0, atol=1e-6)
    assert forward_weights([2, 5], 8).tolist() == [0, 0, 1, 2 / 3, 1 / 3, 1, 1, 1]
    assert forward_weights([0], 3).tolist() == [1, 1, 1]
    assert torch.equal(segment_with_corrections(net, video), net(video))  # no corrections: plain inference


def test_corrections_checked() -> None:
    net = small_net()
    video = torch.rand(1, 1, 16, 16, 4)
    with pytest.raises(ValueError, match=r"outside the cine's 4 frames"):
        segment_with_corrections(net, video, torch.zeros(16, 16, 4, dtype=torch.long), [4])
    with pytest.raises(ValueError, match=r"corrections are \(16, 16, 3\)"):
        segment_with_corrections(net, video, torch.zeros(16, 16, 3, dtype=torch.long), [0])
    with pytest.raises(ValueError, match=r"correction labels \[3\] are not classes"):
        segment_with_corrections(net, video, torch.full((16, 16, 4), 3, dtype=torch.long), [0])


def test_training_recipe_options_through_the_bundle(tmp_path) -> None:
    """train.json with clips at the cine's own step, time reversal and given masks: the trainer feeds them through."""
    from test_bundle import tiny_overrides, workflow

    from scripts.training import ensure_synthetic_data

    data = ensure_synthetic_data(tmp_path / "data", patients=10, seed=3, size=64, progress=False)
    overrides = tiny_overrides(tmp_path, Path(data))
    overrides.update(clip_sampling="consecutive", clip_reverse_prob=0.5, given_mask_prob=0.5, num_iterations=4)
    overrides.update(first_frame_loss_weight=3.0)
    wf = workflow(["train.json", "small_cpu.json"], "train", overrides)
    wf.initialize()
    network = wf.parser.get_parsed_content("network")
    seen: list[dict] = []
    network.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append({"T": args[0].shape[-1], **kwargs}), with_kwargs=True
    )
    validation = wf.parser.get_parsed_content("validate#dataset")
    wf.run()
    wf.finalize()
    training = [s for s in seen if "given_frames_BT" in s]
    assert training and all(s["T"] == 4 for s in training)  # consecutive clips of num_frames
    assert any(s["given_frames_BT"].any() for s in training)  # true masks given
    whole = [int(item["image"].shape[-1]) for item in validation]
    assert min(whole) >= 10 and len(set(whole)) > 1  # validation on whole cines at their own frame rate
    assert wf.parser.get_parsed_content("eval_protocol") == "whole_cine"
    assert wf.parser.get_parsed_content("loss").first_frame_weight == 3.0


@pytest.mark.parametrize("kind", ["dicom_region", "nifti"])
def test_corrections_through_inference_json(tmp_path, kind: str) -> None:
    """A user corrects frames of the bundle's own label output; inference keeps them as drawn and records them."""
    import json
    import subprocess
    import sys

    import nibabel as nib
    from fixtures_echo import phantom, save_nifti_hwt, write_dicom

    repo = Path(__file__).resolve().parents[1]
    data, models = tmp_path / "data", tmp_path / "models"
    data.mkdir()
    models.mkdir()
    torch.manual_seed(0)
    torch.save(GDKVM(size="small", out_channels=2).state_dict(), models / "model.pt")
    cine = phantom(56, 48, 6, seed=5)[0]
    if kind == "nifti":
        source = data / "cine.nii.gz"
        save_nifti_hwt(cine, source)
    else:
        source = write_dicom(data / "cine.dcm", np.moveaxis(cine, -1, 0), region=(4, 6, 44, 52))

    def run(out: Path, *extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundle/configs/inference.json"]
        command += ["--bundle_root", str(repo / "bundle"), "--dataset_dir", str(data), "--output_dir", str(out)]
        command += ["--ckpt_dir", str(models), "--network_size", "small", "--spatial_size", "64"]
        command += ["--write_overlays", "False", *extra]
        return subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)

    plain = run(tmp_path / "plain")
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    label_file = tmp_path / "plain" / "cine_seg.nii.gz"
    label = nib.load(label_file)
    drawn = np.zeros(label.shape, np.uint8)  # the bundle's own layout: (x = column, y = row, t)
    drawn[20:30, 18:34, 2] = 1
    drawn[22:28, 20:32, 4] = 1
    corrections = tmp_path / "corrected.nii.gz"
    nib.save(nib.Nifti1Image(drawn, label.affine), corrections)
    done = run(tmp_path / "fixed", "--corrections", str(corrections), "--overwrite", "True")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = np.asarray(nib.load(tmp_path / "fixed" / "cine_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(result[..., [2, 4]], drawn[..., [2, 4]])  # kept exactly as drawn
    report = json.loads((tmp_path / "fixed" / "cine_seg.json").read_text())
    assert report["corrected_frames"] == [2, 4]  # the frames with an LV, when none are named
    named = run(tmp_path / "named", "--corrections", str(corrections), "--corrected_frames", "[4]")
    assert named.returncode == 0
    assert json.loads((tmp_path / "named" / "cine_seg.json").read_text())["corrected_frames"] == [4]
    nib.save(nib.Nifti1Image(drawn[:, :-2], label.affine), tmp_path / "wrong.nii.gz")
    wrong = run(tmp_path / "wrong", "--corrections", str(tmp_path / "wrong.nii.gz"))
    assert wrong.returncode == 1
    assert "wrong.nii.gz" in wrong.stdout + wrong.stderr and "does not lie on" in wrong.stdout + wrong.stderr
    assert not (tmp_path / "wrong" / "cine_seg.json").exists()
    alone = run(tmp_path / "alone", "--corrected_frames", "[2]")  # frames named, no corrected label: refused
    assert alone.returncode == 1
    assert "corrected_frames given without a corrected label" in alone.stdout + alone.stderr
    assert not (tmp_path / "alone" / "cine_seg.json").exists()
    nib.save(nib.Nifti1Image(2 * drawn, label.affine), tmp_path / "myocardium.nii.gz")  # a class the model lacks
    foreign = run(
        tmp_path / "foreign", "--corrections", str(tmp_path / "myocardium.nii.gz"), "--corrected_frames", "[2]"
    )
    assert foreign.returncode == 1
    assert "myocardium.nii.gz" in foreign.stdout + foreign.stderr
    assert "labels [2] are not classes of this model (0..1)" in foreign.stdout + foreign.stderr
    assert not (tmp_path / "foreign" / "cine_seg.json").exists()
    assert source.exists()


def test_per_frame_inferer_is_the_network_without_memory() -> None:
    from scripts.training import PerFrameInferer

    net = small_net()
    video = torch.rand(2, 1, 32, 32, 3)
    with torch.no_grad():
        folded = PerFrameInferer()(video, net, given_masks_BNHWT=None)
        for t in range(3):
            torch.testing.assert_close(folded[..., t], net(video[..., t : t + 1])[..., 0], rtol=0, atol=1e-5)
