"""A tiny Stable-Diffusion-1.x-shaped model for the toy world.

Same component classes and folder layout as SD 1.x (so StableDiffusionPipeline and the engine's
loader take it unchanged), scaled down to train on a 2-core CPU in well under an hour:

* images 64x64, VAE with two blocks = downsampling factor 2 -> 4x32x32 latents;
* UNet levels 32x32 (no attention, like SD's top level is the costly one), 16x16 and 8x8 (both with
  cross-attention), so cross-attention exists at 1/4 of the latent resolution = 8x8, the level
  Break-A-Scene's attention loss reads (16x16 of SD's 64x64 latents);
* CLIP text encoder of width 768 (so the engine's family detection sees "sd1": context 768) but
  only 2 layers, a narrow MLP and 40 positions, with the toy world's word-level tokenizer;
* DDPMScheduler with SD 1.x's scaled-linear betas and epsilon prediction (v1, v2); "v2v" predicts v on the
  same betas rescaled to zero terminal SNR (Lin et al. 2023), as SD 2.x's v models and later SD fine-tunes do.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .tokenizer import MAX_TOKENS, build_tokenizer


@dataclass(frozen=True)
class ToyModelConfig:
    image_size: int = 64
    vae_channels: tuple[int, ...] = (16, 32)  # len - 1 downsamplings -> factor 2; (32, 64) costs 4x
    vae_norm_groups: int = 8
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 128)  # latent 32x32 -> 16x16 -> 8x8
    unet_heads: tuple[int, ...] = (1, 2, 4)  # head dim 32: CPU attention is slow with SD's head dim 8
    unet_layers: int | tuple[int, ...] = 1  # ResNet (+ attention) layers per UNet level, or one count per level
    unet_norm_groups: int = 16
    # > 0: the UNet also takes the caption as one attention-pooled vector added to its time embedding (diffusers'
    # addition_embed_type="text", as DeepFloyd IF; SDXL's pooled text input plays the same part), with this many
    # pooling heads: a global pathway that tells every ResNet block what the caption asks for
    text_pooling_heads: int = 0
    # Cross-attention (with self-attention, as SD's top level) at the full latent resolution too. Without it the
    # caption reaches the UNet only at 16x16 and 8x8, where a small object is ~4 cells across: too coarse to draw
    # an outline, which the 32x32 level then has to draw from upsampled features that may not carry the shape.
    text_at_top: bool = False
    # What the UNet predicts, and whether the betas are rescaled so that the last timestep is pure noise. SD's
    # schedule keeps ~7 % of the image at t=999; over a 32x32 latent that leaks an image's layout and colours
    # (averaged over an object's ~50 latent pixels it is visible), so the model learns to read them off the noise
    # instead of making them from the caption, and from pure noise at sampling time it reads chance. Zero terminal
    # SNR removes the leak; epsilon is undefined there, hence v prediction with it.
    prediction_type: str = "epsilon"
    zero_terminal_snr: bool = False
    text_dim: int = 768  # must equal SD 1.x's context width for the engine's family detection
    text_layers: int = 2
    text_heads: int = 12
    text_ffn: int = 512
    max_tokens: int = MAX_TOKENS

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_factor

    @property
    def attention_resolutions(self) -> list[int]:
        """Latent-space sizes at which the UNet has cross-attention."""
        return [self.latent_size // 2**i for i in range(0 if self.text_at_top else 1, len(self.unet_channels))]

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', not {self.prediction_type!r}")
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            raise ValueError("zero_terminal_snr needs prediction_type='v_prediction' (epsilon is undefined at the "
                             "pure-noise step)")

    def to_dict(self) -> dict:
        return asdict(self)


#: Model designs by world version: "v1" is the committed ``weights/toy_sd``; "v2" is the design of issue 10 (a
#: model that draws shapes; see README "Toy world v2"). ``scripts/pretrain_toy.py --config`` picks one.
TOY_CONFIGS: dict[str, ToyModelConfig] = {
    "v1": ToyModelConfig(),
    # Capacity where the caption meets the picture and where an object's outline is decided (16x16 and 8x8:
    # a large object spans ~6 cells at 16x16): wider and two layers there; the 32x32 level, which already
    # draws textures right in v1, stays as it is (it is the costly one). 12.0 M UNet parameters: with the
    # 7.0 M text encoder the fp16 weights are ~36.6 MB (limit 40); (32, 96, 192) would be 45 MB.
    "v2": ToyModelConfig(unet_channels=(32, 96, 160), unet_heads=(1, 3, 5), unet_layers=(1, 2, 2)),
    # v2 with the pooled-caption pathway (1.9 M parameters): after 2000 UNet steps v2 drew colours but no outlines
    # (bas_toyworld/weights/PRETRAIN_V2.md); the 8x8 level is narrowed to 144 to stay under 40 MB (~39.3 MB)
    "v2t": ToyModelConfig(unet_channels=(32, 96, 144), unet_heads=(1, 3, 4), unet_layers=(1, 2, 2),
                          text_pooling_heads=12),
    # v2 with v prediction on a zero-terminal-SNR schedule (same UNet; can continue a v2 run's state)
    "v2v": ToyModelConfig(unet_channels=(32, 96, 160), unet_heads=(1, 3, 5), unet_layers=(1, 2, 2),
                          prediction_type="v_prediction", zero_terminal_snr=True),
    # v2v with the caption at 32x32 too (0.2 M parameters more); a fork of a v2v state grows into it (the new
    # attention blocks start as the identity)
    "v2va": ToyModelConfig(unet_channels=(32, 96, 160), unet_heads=(1, 3, 5), unet_layers=(1, 2, 2),
                           prediction_type="v_prediction", zero_terminal_snr=True, text_at_top=True),
    # world v3 (issue 22; bas_toyworld/world_v3.py): v2v's design, the one that learned background and colour
    # (v prediction, zero terminal SNR), trained on the smaller world; same architecture as v2v, so a v2v state
    # can be forked into it. One UNet step (batch 16, 1 thread, idle machine): 1.15 s (v1's UNet 0.53 s)
    "v3": ToyModelConfig(unet_channels=(32, 96, 160), unet_heads=(1, 3, 5), unet_layers=(1, 2, 2),
                         prediction_type="v_prediction", zero_terminal_snr=True),
}


def build_vae(cfg: ToyModelConfig) -> "AutoencoderKL":
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels, layers_per_block=1, norm_num_groups=cfg.vae_norm_groups,
        sample_size=cfg.image_size,
        # Self-attention over 32x32 latents would be the VAE's most expensive op and buys nothing
        # for flat-coloured shapes.
        mid_block_add_attention=False,
    )
    # Residual branches start at zero (every ResNet block is the identity), which trains this small
    # VAE from scratch markedly faster (~22 vs ~19 dB PSNR after 300 steps in our runs).
    from diffusers.models.resnet import ResnetBlock2D

    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, ResnetBlock2D):
                m.conv2.weight.zero_()
                m.conv2.bias.zero_()
    return vae


def build_unet(cfg: ToyModelConfig) -> "UNet2DConditionModel":
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=cfg.latent_size, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlock2D" if cfg.text_at_top else "DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("CrossAttnUpBlock2D" if cfg.text_at_top else "UpBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=cfg.unet_channels, layers_per_block=cfg.unet_layers,
        cross_attention_dim=cfg.text_dim, attention_head_dim=cfg.unet_heads,  # diffusers: = number of heads
        norm_num_groups=cfg.unet_norm_groups, use_linear_projection=False,  # SD 1.x style proj_in conv
        **({"addition_embed_type": "text", "addition_embed_type_num_heads": cfg.text_pooling_heads}
           if cfg.text_pooling_heads else {}),
    )


def build_text_encoder(cfg: ToyModelConfig, tokenizer) -> "CLIPTextModel":
    from transformers import CLIPTextConfig, CLIPTextModel

    tcfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_dim, intermediate_size=cfg.text_ffn,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_tokens, hidden_act="quick_gelu", projection_dim=cfg.text_dim,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(tcfg)


def build_scheduler(cfg: ToyModelConfig | None = None) -> "DDPMScheduler":
    """The training scheduler of a design (default v1's: SD 1.x's)."""
    from diffusers import DDPMScheduler

    cfg = cfg or ToyModelConfig()
    schedule = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"} if cfg.zero_terminal_snr else {}
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=cfg.prediction_type, clip_sample=False, steps_offset=1, **schedule,
    )


def save_pipeline(out_dir: str | Path, vae, unet, text_encoder, tokenizer, scheduler,
                  dtype: torch.dtype = torch.float16) -> Path:
    """Save as a standard diffusers StableDiffusionPipeline folder (safetensors, ``dtype`` storage).
    The passed modules are not modified (fp16 copies on the CPU are saved)."""
    from diffusers import StableDiffusionPipeline

    out = Path(out_dir)
    mods = {k: copy.deepcopy(m).to("cpu", dtype) for k, m in
            {"vae": vae, "unet": unet, "text_encoder": text_encoder}.items()}
    pipe = StableDiffusionPipeline(
        **mods, tokenizer=tokenizer, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    # Also write the slow-tokenizer files (vocab.json, merges.txt) next to the tokenizer.json that
    # transformers saves, so tools that want the classic CLIP layout find it; same vocabulary.
    build_tokenizer(out / "tokenizer")
    return out


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load the saved folder in fp32 (the weights are stored fp16; CPU runs want fp32)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path), dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def weights_size_mb(path: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*.safetensors")) / 2**20


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
