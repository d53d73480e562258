"""UNICOM's own ViT as a transformers model, so every fovea loader, tower and trainer takes it.

Follows deepglint/unicom ``unicom/unicom/vision_transformer.py`` (``VisionTransformer``, ``Block``,
``Attention``, ``Mlp``, ``PatchEmbedding``) and ``unicom/unicom/model.py`` (the released
``FP16-ViT-*.pt`` state dicts; their key layout is mapped in towers/weights.py). It is not a CLIP
ViT: a Conv2d patch embedding (with bias) plus a learned position embedding, no CLS token and no
pre-norm; pre-LN blocks with a bias-free fused qkv, SDPA and a ReLU6 MLP; stochastic depth rising
linearly from 0 to ``drop_path_rate``; then a final LayerNorm and the embedding head, which
flattens *all* N tokens: Linear(N·D → D) → BatchNorm1d → Linear(D → E) → BatchNorm1d.

Where fovea differs from the original:

* ``forward`` returns transformers' ``BaseModelOutputWithPooling``: ``hidden_states`` = (patch
  embeddings, block 1, ..., block L) before the final norm, ``last_hidden_state`` = the normed
  tokens the head reads (SigLIP's convention), ``pooler_output`` = the embedding.
* The head reads the output of the *last* block, so a run cut short by fovea's ``depth=`` (LLaVA
  reads layer -2) skips it and ``pooler_output`` is None.
* ``drop_path_rate`` defaults to 0: the original's ``build_model`` sets 0.1, a training setting
  that would make a tower in a VLM random in train mode; the pretraining recipe sets it.
* The original runs every block under CUDA fp16 autocast; here precision is the caller's (dtype,
  autocast). Gradient checkpointing is transformers' (``activation_checkpointing_enable``).
* Errors a user can cause are explicit: pixels of another size than ``image_size`` (the position
  embedding and the flatten head fix the token count), weights for another grid, and a
  train-mode batch of one image (BatchNorm1d cannot normalize a single sample).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .base import TOWER_FAMILIES, TowerFamily


@strict
class UnicomVisionConfig(PreTrainedConfig):
    """Architecture of a UNICOM ViT; defaults are the original ``VisionTransformer``'s."""

    model_type = "unicom_vision_model"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    patch_size: int = 32
    image_size: int = 224
    num_channels: int = 3
    embedding_size: int = 768
    """Width of the head's output embedding (the original's ``embedding_size``)."""
    mlp_ratio: int = 4
    drop_path_rate: float = 0.0
    """Stochastic depth of the last block (block i gets i/(L-1) of it); training only."""
    layer_norm_eps: float = 1e-5
    head_norm_eps: float = 2e-5
    """eps of the head's two BatchNorm1d layers."""
    initializer_range: float = 0.02

    def validate_architecture(self):
        super().validate_architecture()
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")

    @property
    def grid_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_side**2


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm's ``DropPath``, kept samples scaled by 1/keep)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
    return x * mask / keep


class UnicomEmbeddings(nn.Module):
    """pixels (B, C, S, S) -> patch tokens plus position embedding (B, N, D); no CLS token."""

    def __init__(self, config: UnicomVisionConfig):
        super().__init__()
        self.image_size, self.patch_size = config.image_size, config.patch_size
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches, config.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"this UNICOM tower takes {self.image_size}x{self.image_size} pixels, got {height}x{width} "
                "(its position embedding and flatten head fix the number of patches)"
            )
        x = self.patch_embedding(pixel_values)  # (B, D, S/P, S/P)
        x = x.flatten(2).transpose(1, 2)  # (B, D, N) -> (B, N, D), row-major patches
        return x + self.position_embedding

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights for another resolution: name both grids, not just two tensor shapes. A
        # RuntimeError like torch's own size mismatches, so loaders that wrap those name the file.
        given = state_dict.get(prefix + "position_embedding")
        own = self.position_embedding
        if given is not None and given.shape != own.shape:
            raise RuntimeError(
                f"UNICOM weights with a position embedding of {tuple(given.shape)} ({_grid(given.shape[1])} "
                f"patches) do not fit this tower's {tuple(own.shape)} ({_grid(own.shape[1])} patches: "
                f"{self.image_size} px at patch {self.patch_size}); the position embedding and the flatten "
                "head fix the resolution"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class UnicomAttention(nn.Module):
    """Multi-head self-attention with a fused, bias-free qkv projection (as the original)."""

    def __init__(self, config: UnicomVisionConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(batch, tokens, 3, heads, width // heads)  # (B, N, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, Dh)
        if self.config._attn_implementation == "eager":
            scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, N, N)
            out = scores.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(batch, tokens, width)  # (B, H, N, Dh) -> (B, N, D)
        return self.out_proj(out)


class UnicomMLP(nn.Module):
    def __init__(self, config: UnicomVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.hidden_size * config.mlp_ratio)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(config.hidden_size * config.mlp_ratio, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class UnicomBlock(GradientCheckpointingLayer):
    """Pre-LN transformer block; both residual branches carry stochastic depth."""

    def __init__(self, config: UnicomVisionConfig, drop_path_rate: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = UnicomAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = UnicomMLP(config)
        self.drop_path_rate = drop_path_rate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        attended = self.self_attn(self.layer_norm1(hidden_states))
        hidden_states = hidden_states + drop_path(attended, self.drop_path_rate, self.training)
        transformed = self.mlp(self.layer_norm2(hidden_states))
        return hidden_states + drop_path(transformed, self.drop_path_rate, self.training)


class UnicomEncoder(nn.Module):
    """The blocks, in ``layers`` (fovea's ``depth=`` runs a prefix of them)."""

    def __init__(self, config: UnicomVisionConfig):
        super().__init__()
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()
        self.layers = nn.ModuleList([UnicomBlock(config, rate) for rate in rates])

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, N, D) -> the input and every block's output, each (B, N, D)."""
        states = [hidden_states]
        for layer in self.layers:
            states.append(layer(states[-1]))
        return tuple(states)


class UnicomHead(nn.Module):
    """Normed tokens (B, N, D) -> embedding (B, E): the original's ``feature`` Sequential."""

    def __init__(self, config: UnicomVisionConfig):
        super().__init__()
        width, eps = config.hidden_size, config.head_norm_eps
        self.fc1 = nn.Linear(config.num_patches * width, width, bias=False)
        self.bn1 = nn.BatchNorm1d(width, eps=eps)
        self.fc2 = nn.Linear(width, config.embedding_size, bias=False)
        self.bn2 = nn.BatchNorm1d(config.embedding_size, eps=eps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.training and tokens.shape[0] < 2:
            raise ValueError(
                "UNICOM's embedding head normalizes over the batch (BatchNorm1d): in train mode it "
                f"needs at least 2 images, got {tokens.shape[0]}; call .eval() to extract features"
            )
        x = tokens.flatten(1)  # (B, N, D) -> (B, N*D), token-major like the original's reshape
        return self.bn2(self.fc2(self.bn1(self.fc1(x))))


class UnicomVisionModel(PreTrainedModel):
    """pixels (B, C, S, S) -> every hidden state, the normed tokens and UNICOM's embedding."""

    config: UnicomVisionConfig
    config_class = UnicomVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    base_model_prefix = "vision_model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["UnicomBlock"]

    def __init__(self, config: UnicomVisionConfig):
        super().__init__(config)
        self.embeddings = UnicomEmbeddings(config)
        self.encoder = UnicomEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = UnicomHead(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool = True,
        pool: bool = True,
    ) -> BaseModelOutputWithPooling | tuple:
        """`pool=False` skips the embedding head (pooler_output None): what a LLaVA-style model
        reads is the hidden states, and the head's BatchNorm must then neither refuse a single
        view in train mode nor move its running statistics."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        states = self.encoder(self.embeddings(pixel_values))
        last = self.post_layernorm(states[-1])
        complete = len(self.encoder.layers) == self.config.num_hidden_layers
        out = BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=self.head(last) if complete and pool else None,
            hidden_states=states if output_hidden_states else None,
        )
        return out if return_dict else out.to_tuple()

    def _init_weights(self, module: nn.Module) -> None:
        # The original: trunc-normal(0.02) Linear weights with zero bias and position embedding,
        # PyTorch's default Conv2d init, unit norms (transformers' default for norms).
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            fan_in = module.weight[0].numel()
            init.uniform_(module.bias, -(fan_in**-0.5), fan_in**-0.5)
        elif isinstance(module, UnicomEmbeddings):
            init.trunc_normal_(module.position_embedding, std=std)
        else:
            super()._init_weights(module)


def _grid(tokens: int) -> str:
    side = math.isqrt(tokens)
    return f"{side}x{side}" if side * side == tokens else str(tokens)


AutoConfig.register(UnicomVisionConfig.model_type, UnicomVisionConfig)
AutoModel.register(UnicomVisionConfig, UnicomVisionModel)
TOWER_FAMILIES.add(
    UnicomVisionConfig.model_type,
    TowerFamily(has_cls=False, pooled_is_embedding=True, hidden_states_kwargs={"pool": False}),
    "UNICOM's own ViT (no CLS, ReLU6, flatten-FC-BN embedding head); fovea's module",
)
