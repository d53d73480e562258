"""ConvLLaVA's fifth stage: grow a four-stage ConvNeXt by one stage (alibaba/conv-llava).

The new stage is transformers' own ``ConvNextStage`` from the last width to `width`: a
channels-first LayerNorm and a 2x2 stride-2 convolution (the grid halves, so the overall stride
goes from 32 to 64), then `depth` blocks. It is initialised as the original's: PyTorch's default
init for its convolutions and linears (the original builds it after the pretrained tower's own
init ran, so transformers' normal(0.02) init never touches it), LayerNorms at 1 and 0, layer scale
at the config's ``layer_scale_init_value`` (1e-6), no stochastic depth. The tower's config then
says five stages, exactly as transformers writes a five-stage ConvNeXt, so the result saves and
reloads as one (`fovea.load`, or ``ConvNextModel.from_pretrained`` on ``tower.model.save_pretrained``).
"""

from __future__ import annotations

from transformers import ConvNextConfig
from transformers.models.convnext.modeling_convnext import ConvNextStage

from ..errors import ConfigError
from .base import VisionTower


def add_stage(tower: VisionTower, depth: int, width: int) -> None:
    """Append one stage of `depth` blocks and `width` channels to a ConvNeXt `tower`, in place."""
    if tower.config.model_type != "convnext":
        raise ConfigError(
            f"tower_add_stage: the tower is {tower.config.model_type!r}; only a ConvNeXt grows stages"
        )
    if depth < 1 or width < 1:
        raise ConfigError(f"tower_add_stage: depth and width must be positive, got {depth} and {width}")
    config = tower.model.config
    first = next(tower.model.parameters())
    stage = ConvNextStage(config, config.hidden_sizes[-1], width, kernel_size=2, stride=2, depth=depth)
    tower.model.encoder.stages.append(stage.to(device=first.device, dtype=first.dtype))
    fields = {
        k: v for k, v in config.to_dict().items() if k not in ("stage_names", "out_features", "out_indices")
    }
    fields.update(depths=[*config.depths, depth], hidden_sizes=[*config.hidden_sizes, width])
    fields["num_stages"] = len(fields["depths"])
    grown = ConvNextConfig(
        **{k: v for k, v in fields.items() if k not in ("model_type", "transformers_version")}
    )
    tower.model.config = grown
    saved = {k: v for k, v in grown.to_dict().items() if k != "transformers_version"}
    tower.config.hf_config = {**saved, "model_type": "convnext"}
