"""The paper's networks at the paper's resolution (1152x896): slow on CPU, memory checks on a GPU."""

from __future__ import annotations

import pytest
import torch

from mammokit.models import create_model, whole_from_patch

FULL = (1152, 896)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "top", "channels"), [("resnet50", "resnet_2x", 1024), ("vgg16", "vgg_512x1", 512)]
)
def test_paper_whole_models_run_at_full_resolution_cpu(backbone: str, top: str, channels: int) -> None:
    torch.manual_seed(0)
    patch = create_model("patch_classifier", backbone=backbone, num_classes=5).eval()
    whole = whole_from_patch(patch, top=top).eval()
    x = torch.randn(1, 1, *FULL)
    with torch.no_grad():
        feats = whole.forward_features(x)
        assert torch.equal(feats, patch.forward_features(x))
        assert feats.shape[-2:] == (36, 28)
        mapped = whole.top(feats)
        assert mapped.shape == (1, channels, 9, 7)
        assert torch.isfinite(whole.head(mapped)).all()


def _peak_train_step_bytes(model: torch.nn.Module, batch: int) -> int:
    device = torch.device("cuda")
    x = torch.randn(batch, 1, *FULL, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("backbone", "top"), [("resnet50", "resnet_2x"), ("vgg16", "vgg_512x1")])
def test_full_resolution_training_step_fits_and_checkpointing_saves_memory(backbone: str, top: str) -> None:
    """bf16 autocast training step at 1152x896, batch 2 (the paper's batch), with and without checkpointing."""
    torch.manual_seed(0)
    model = create_model("whole_image", backbone=backbone, top=top).cuda().train()
    plain = _peak_train_step_bytes(model, 2)
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    ckpt = _peak_train_step_bytes(model, 2)
    print(f"{backbone}/{top} 1152x896 batch 2 bf16 peak: {plain / 2**30:.2f} GiB, checkpointed {ckpt / 2**30:.2f} GiB")
    assert ckpt < plain  # (not yet run on a GPU in development; the printed numbers go into docs/models.md)
