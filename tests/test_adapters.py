"""What trains in each UNet: Custom Diffusion K/V copies or LoRA, spliced in only while applied."""

import pytest
import torch

from echodistill_core.adapters import AdapterSet, target_layers
from echodistill_core.lab.tiny import tiny_unet


def run(unet):
    torch.manual_seed(0)
    return unet(torch.randn(1, 3, 16, 16), torch.tensor([500]), torch.randn(1, 16, 32)).sample


def test_custom_diffusion_adapts_every_cross_attention_key_and_value():
    unet = tiny_unet(3, 16, 0)
    adapters = AdapterSet(unet, "custom_diffusion")
    assert adapters.paths() == list(target_layers(unet))
    assert all(path.endswith(("attn2.to_k", "attn2.to_v")) for path in adapters.paths())
    assert len(target_layers(unet, all_attention=True)) == 4 * len(adapters.paths())


@pytest.mark.parametrize("kind, all_attention", [("custom_diffusion", False), ("lora", False), ("lora", True)])
def test_adapters_start_as_identity_and_disable_to_the_base(kind, all_attention):
    unet = tiny_unet(3, 16, 0)
    base = run(unet)
    adapters = AdapterSet(unet, kind, rank=2, all_attention=all_attention)
    with adapters.applied(unet):
        torch.testing.assert_close(run(unet), base)
        for parameter in adapters.parameters():
            parameter.data.add_(0.3 * torch.randn_like(parameter))
        changed = run(unet)
        with adapters.disabled():
            assert torch.equal(run(unet), base)
    assert not torch.allclose(changed, base)
    assert torch.equal(run(unet), base)  # restored after the block
    assert not any(p.requires_grad for p in unet.parameters())


def test_lora_deltas_are_up_times_down_times_scale():
    unet = tiny_unet(3, 16, 0)
    adapters = AdapterSet(unet, "lora", rank=2, alpha=1.0)
    adapter = next(iter(adapters.adapters.values()))
    adapter.up.data.normal_()
    path = adapters.paths()[0]
    torch.testing.assert_close(adapters.deltas(unet)[path], adapter.up @ adapter.down * 0.5)


def test_custom_diffusion_refuses_all_attention_and_double_application():
    unet = tiny_unet(3, 16, 0)
    with pytest.raises(ValueError, match="LoRA only"):
        AdapterSet(unet, "custom_diffusion", all_attention=True)
    adapters = AdapterSet(unet)
    with adapters.applied(unet), pytest.raises(RuntimeError, match="already applied"):
        with adapters.applied(unet):
            pass
