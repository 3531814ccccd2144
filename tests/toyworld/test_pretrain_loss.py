"""The pretraining's loss weights (bas_toyworld.pretraining, used by scripts/pretrain_toy.py): epsilon's min-SNR-5
with the capped boost of noisy steps as before, and v prediction on the zero-terminal-SNR schedule weighing a wrong
x0 by clamp(snr, 1, 5), finite at pure noise."""
import torch

from bas_toyworld.model import TOY_CONFIGS, build_scheduler
from bas_toyworld.pretraining import loss_weight

T = torch.tensor([0, 100, 300, 500, 700, 800, 900, 999])


def test_epsilon_weight_is_min_snr_with_the_capped_boost():
    acp = build_scheduler().alphas_cumprod[T]
    snr = acp / (1 - acp)
    expected = torch.clamp(snr, max=5.0) / snr * torch.clamp(1 + 1 / snr, max=5.0)
    assert torch.equal(loss_weight(acp, "epsilon", 5.0), expected)
    assert torch.equal(loss_weight(acp, "epsilon", 1.0), torch.clamp(snr, max=5.0) / snr)


def test_v_weight_on_zero_terminal_snr_weighs_x0_by_clamped_snr():
    scheduler = build_scheduler(TOY_CONFIGS["v2v"])
    acp = scheduler.alphas_cumprod[T]
    assert float(acp[-1]) == 0.0 and scheduler.config.prediction_type == "v_prediction"
    w = loss_weight(acp, "v_prediction", 5.0)
    assert torch.isfinite(w).all() and float(w[-1]) == 1.0  # pure noise: v = -x0, weighed 1
    snr = acp / (1 - acp)
    x0_weight = w * (snr + 1)  # the v loss weighs a wrong x0 by snr + 1
    assert torch.allclose(x0_weight, torch.clamp(snr, 1.0, 5.0))
    # the noisy steps count far more than under the epsilon recipe (x0 weight there: 5 * snr at most)
    eps_acp = build_scheduler().alphas_cumprod[T]
    eps_snr = eps_acp / (1 - eps_acp)
    eps_x0_weight = loss_weight(eps_acp, "epsilon", 5.0) * eps_snr
    assert (x0_weight[5:] > 4 * eps_x0_weight[5:]).all()
