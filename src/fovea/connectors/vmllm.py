"""vMLLM: layer aggregation and question-gated enhancement of the visual tokens (xmu-xiaoma666/vMLLM).

The selected layers are the tower's hidden states to aggregate, then the *selected* one last (as
MMFuser's query): ``connector.layers: [0, 1, ..., F-1, S]``. With F aggregated states::

    low, high = MAM(hs[:F//2]), MAM(hs[F//2:])       per-token attention across layers
    streams   = low, high, selected                  (times CLIP's visual_projection, D -> P)
    c_s       = CLS of the stream (towers with one), else its mean token
    t         = the sample's question through the frozen text tower (see `_text_vectors`)
    X_s'      = (X_s + sigmoid(q_t X_s . k_t t) v_t X_s + sigmoid(q_c X_s . k_c c_s) v_c X_s) / 3
    out       = concat(X_low' / |X_low'|, X_high' / |X_high'|, X_sel' / |X_sel'|)   (V, N, 3P)

MAM: each token's query is its mean over the group's layers, its keys and values its per-layer
features (one head, scaled by 1/sqrt(D)), plus the mean as residual. The gates share one set of
weights over the three streams. The projector (the original's ``ProjectBlock.proj``) follows.

The text tower is transformers' own CLIP or SigLIP text model with its tokenizer, frozen, filled
from the vision tower's own checkpoint (`load_pretrained`: its text half and, for CLIP, its two
projection matrices; never a second full ``CLIPModel``). The question is what
`fovea.model.prompting.question_text` gives, tokenized as the original does: padded to the
longest, truncated at the tokenizer's limit (CLIP 77, SigLIP 64), attention mask passed.

``faithful: true`` (the default, and what the released checkpoints were trained with) keeps the
original's numerics: CLIP's text vector is its pooled output through ``text_projection`` twice (the
first application without gradient), SigLIP's is token 0 of the last block *before* the final
LayerNorm, the gates are unscaled, and the L2 norm has no epsilon. ``faithful: false`` corrects the
first three for new training: one projection, SigLIP's pooled output, gates scaled by 1/sqrt(P).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..hub import resolve_directory
from .fusers import FUSERS, Fuser, FuserConfig, FuserInput

TEXT_TYPES = ("clip_text_model", "siglip_text_model")
KNOWN_TEXT_TOWERS = {
    "openai/clip-vit-large-patch14-336": {
        "text_tower": {"model_type": "clip_text_model", "hidden_size": 768, "intermediate_size": 3072,
                       "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
                       "vocab_size": 49408, "hidden_act": "quick_gelu", "bos_token_id": 0, "eos_token_id": 2,
                       "pad_token_id": 1},
        "projection_dim": 768,
    },
    "google/siglip-so400m-patch14-384": {
        "text_tower": {"model_type": "siglip_text_model", "hidden_size": 1152, "intermediate_size": 4304,
                       "num_hidden_layers": 27, "num_attention_heads": 16, "max_position_embeddings": 64,
                       "vocab_size": 32000, "hidden_act": "gelu_pytorch_tanh",
                       # its tokenizer's ids (the config's defaults, 49406/49407, lie outside the vocabulary)
                       "bos_token_id": None, "eos_token_id": 1, "pad_token_id": 1},
        "projection_dim": None,
    },
}  # fmt: skip
"""The text halves of the published two-tower checkpoints vMLLM uses (their hub config.json), so a
recipe resolves offline, as tower presets do."""
TOKENIZER_DIR = "text_tokenizer"
"""Where a fovea checkpoint keeps the text tower's tokenizer."""


@dataclass(kw_only=True)
class VMLLMConfig(FuserConfig):
    type: str = "vmllm"
    text_tower: dict | None = None
    """transformers config of the frozen text tower (``model_type`` clip_text_model or
    siglip_text_model); filled from the vision tower's checkpoint when a recipe leaves it out."""
    projection_dim: int | None = None
    """P, CLIP's joint width: the fuser then owns ``visual_projection`` (D -> P) and
    ``text_projection``, from the same checkpoint. None (SigLIP): no projection, P = D."""
    faithful: bool = True
    """Keep the original's numerics (see the module docstring); false corrects them."""
    text_from: str | None = None
    """Where the text tower comes from (hub id, preset or directory of a CLIP/SigLIP checkpoint)
    when the vision tower has none of its own (MLCD, DFN, UNICOM). Its ``visual_projection`` is
    then not used: the fuser's own starts random and trains."""


class LayerAttention(nn.Module):
    """MAM: attention across a group of layers, per token."""

    def __init__(self, width: int):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        stack = torch.stack(layers, dim=-2)  # (V, N, L, D)
        mean = stack.mean(-2, keepdim=True)  # (V, N, 1, D)
        scores = self.query(mean) @ self.key(stack).transpose(-1, -2) / math.sqrt(stack.shape[-1])
        return (mean + scores.nan_to_num().softmax(-1) @ self.value(stack)).squeeze(-2)


class Gate(nn.Module):
    """One sigmoid gate: how much of v(X) each token takes, from its match with a vector."""

    def __init__(self, width: int, scale: float):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.scale = scale

    def forward(self, tokens: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        weight = torch.sigmoid(self.query(tokens) @ self.key(vector).transpose(-1, -2) * self.scale)
        return weight * self.value(tokens)  # (V, N, 1) * (V, N, P)


class Enhance(nn.Module):
    """Everything vMLLM trains besides the MLP: two layer attentions and the two gates."""

    def __init__(self, width: int, fused: int, scale: float):
        super().__init__()
        self.low, self.high = LayerAttention(width), LayerAttention(width)
        self.text_gate, self.image_gate = Gate(fused, scale), Gate(fused, scale)

    def gated(self, tokens: torch.Tensor, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        mixed = (tokens + self.text_gate(tokens, text) + self.image_gate(tokens, image)) / 3
        return mixed / mixed.norm(p=2, dim=-1, keepdim=True)


@FUSERS.register("vmllm", "vMLLM: layer aggregation + question-gated enhancement (needs the question)")
class VMLLMFuser(Fuser):
    config_class = VMLLMConfig
    reads_question = True

    def __init__(self, config: VMLLMConfig, widths: list[int]):
        super().__init__()
        if len(widths) < 3:
            raise ConfigError(
                f"fuser vmllm: connector.layers names {len(widths)} layer(s); it needs the layers to "
                "aggregate (at least 2) and then the selected one"
            )
        self.config, width = config, widths[-1]
        self.text = text_tower(config)
        self.text.requires_grad_(False)
        text_width = self.text.config.hidden_size
        self.fused = config.projection_dim or width
        _check_widths(config, width, text_width)
        if config.projection_dim is not None:
            self.projection = nn.ModuleDict(
                {
                    "visual": nn.Linear(width, self.fused, bias=False),
                    "text": nn.Linear(text_width, self.fused, bias=False),
                }
            )
        scale = 1.0 if config.faithful else 1 / math.sqrt(self.fused)
        self.enhance = Enhance(width, self.fused, scale)
        self.tokenizer = None
        """The text tower's tokenizer (`load_pretrained`, `load_files` or set directly)."""

    def out_width(self) -> int:
        return 3 * self.fused

    def frozen_modules(self) -> list[nn.Module]:
        return [self.text]

    def train(self, mode: bool = True) -> VMLLMFuser:
        super().train(mode)
        self.text.eval()  # frozen: never in training mode (no dropout)
        return self

    # -- forward -------------------------------------------------------------------------------

    def forward(self, inputs: FuserInput) -> torch.Tensor:
        *group, selected = self._with_prefix(inputs)
        half = len(group) // 2
        streams = [self.enhance.low(group[:half]), self.enhance.high(group[half:]), selected]
        if self.config.projection_dim is not None:
            streams = [self.projection["visual"](s) for s in streams]
        text = self._text_vectors(inputs).to(streams[0].dtype)  # (V, 1, P)
        out = []
        for stream in streams:
            if inputs.prefix is not None:  # the CLS as the image vector, then dropped
                image, tokens = stream[:, :1], stream[:, 1:]
            else:
                image, tokens = stream.mean(1, keepdim=True), stream
            out.append(self.enhance.gated(tokens, image, text))
        return torch.cat(out, dim=-1)

    @staticmethod
    def _with_prefix(inputs: FuserInput) -> list[torch.Tensor]:
        """Each selected layer with its CLS in front (the aggregation runs per token, CLS included)."""
        if inputs.prefix is None:
            return list(inputs.layers)
        return [torch.cat([p, x], dim=1) for p, x in zip(inputs.prefix, inputs.layers)]

    def _text_vectors(self, inputs: FuserInput) -> torch.Tensor:
        """(V, 1, P): every view's question vector (each row's question encoded once)."""
        samples = (
            inputs.samples
            if inputs.samples is not None
            else torch.zeros(len(inputs.layers[0]), dtype=torch.long)
        )
        rows = sorted(set(samples.tolist()))
        vectors = self.encode_questions([inputs.questions[r] for r in rows])
        position = {row: i for i, row in enumerate(rows)}
        index = torch.tensor([position[r] for r in samples.tolist()], device=vectors.device)
        return vectors[index]

    def encode_questions(self, questions: list[str]) -> torch.Tensor:
        """(R, 1, P) text vectors, as the original computes them (see the module docstring)."""
        if self.tokenizer is None:
            raise ConfigError("fuser vmllm: no text tokenizer (load the model with fovea.load)")
        limit = min(self.tokenizer.model_max_length, self.text.config.max_position_embeddings)
        batch = self.tokenizer(
            questions, return_tensors="pt", padding=True, truncation=True, max_length=limit
        )
        batch = {k: v.to(self.text.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        clip = self.config.projection_dim is not None
        with torch.no_grad():
            out = self.text(**batch, output_hidden_states=True)
            if clip:
                vector = out.pooler_output  # the EOS token after the final LayerNorm
                if self.config.faithful:  # forward_text projects once, encode_images again
                    vector = self.projection["text"](vector)
            elif self.config.faithful:
                vector = out.hidden_states[-1][:, 0]  # token 0, before the final LayerNorm
            else:
                vector = out.pooler_output
        if clip:
            vector = self.projection["text"](vector)
        return vector[:, None]

    # -- pretrained parts and files ------------------------------------------------------------

    @classmethod
    def complete_config(cls, config: VMLLMConfig, source: str | None) -> VMLLMConfig:
        if config.text_tower is not None:
            return config
        origin = config.text_from or source
        if origin is None:
            raise ConfigError("fuser vmllm: text_tower is needed when the tower has no pretrained checkpoint")
        from dataclasses import replace

        fields = text_fields(origin)
        if config.text_from is not None:  # another tower's joint space: keep the recipe's width
            fields["projection_dim"] = config.projection_dim or fields["projection_dim"]
        return replace(config, **fields)

    def load_pretrained(self, source: str) -> None:
        """The text half (and CLIP's projections) of the tower's checkpoint, or of `text_from`'s,
        and its tokenizer. Another checkpoint's visual projection is not this tower's: kept random."""

        directory = resolve_directory(self.config.text_from or source)
        state = text_state(directory, self.config.projection_dim is not None)
        wanted = ("text.", "projection.") if self.config.text_from is None else ("text.", "projection.text.")
        state = {k: v for k, v in state.items() if k.startswith(wanted)}
        missing = sorted({k for k in self.state_dict() if k.startswith(wanted)} - set(state))
        if missing:
            raise ConfigError(f"{directory}: lacks the vmllm text tower tensor {missing[0]!r}")
        try:
            self.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise ConfigError(
                f"{directory}: its text tower does not fit ({str(err).splitlines()[-1].strip()})"
            ) from None
        self.tokenizer = load_text_tokenizer(directory)

    def init_random(self) -> None:
        """A tiny random text tower gets fovea's tiny tokenizer of its kind."""
        from ..tiny_tokenizers import tiny_text_tower

        tokenizer = tiny_text_tower(self.config.text_tower["model_type"])[1]
        if len(tokenizer) > self.text.config.vocab_size:
            raise ConfigError(
                f"fuser vmllm: text_tower vocab_size {self.text.config.vocab_size} is below the tiny "
                f"tokenizer's {len(tokenizer)} (see fovea.tiny.tiny_text_tower)"
            )
        self.tokenizer = tokenizer

    def save_files(self, directory) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(Path(directory) / TOKENIZER_DIR))

    def load_files(self, directory) -> None:
        if (Path(directory) / TOKENIZER_DIR).is_dir():
            self.tokenizer = load_text_tokenizer(Path(directory) / TOKENIZER_DIR)


def text_tower(config: VMLLMConfig) -> nn.Module:
    """transformers' own text model for ``config.text_tower`` (random weights until loaded)."""
    from transformers import AutoConfig, CLIPTextModel, SiglipTextModel

    kind = (config.text_tower or {}).get("model_type")
    if kind not in TEXT_TYPES:
        raise ConfigError(
            f"fuser vmllm: text_tower must be a transformers text config ({', '.join(TEXT_TYPES)}); "
            "it is filled from a pretrained CLIP or SigLIP tower"
        )
    fields = {k: v for k, v in config.text_tower.items() if k not in ("model_type", "transformers_version")}
    model_class = {"clip_text_model": CLIPTextModel, "siglip_text_model": SiglipTextModel}[kind]
    return model_class(AutoConfig.for_model(kind, **fields))


def _check_widths(config: VMLLMConfig, width: int, text_width: int) -> None:
    fused = config.projection_dim or width
    if config.projection_dim is None and text_width != width:
        raise ConfigError(
            f"fuser vmllm: the text tower's width {text_width} differs from the vision tower's "
            f"{width}; without projection_dim (CLIP's joint space) they must agree"
        )
    if config.projection_dim is not None and config.faithful and text_width != fused:
        raise ConfigError(
            f"fuser vmllm: faithful applies text_projection twice, which needs the text width "
            f"({text_width}) to equal projection_dim ({fused}); set faithful: false"
        )


def text_fields(source: str) -> dict:
    """``text_tower`` and ``projection_dim`` from a CLIP or SigLIP checkpoint's config."""
    from transformers import AutoConfig

    from ..towers.presets import TOWER_PRESETS

    hub_id = TOWER_PRESETS.get(source).hub_id if source in TOWER_PRESETS else source
    if hub_id in KNOWN_TEXT_TOWERS:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in KNOWN_TEXT_TOWERS[hub_id].items()}
    directory = resolve_directory(source)
    config = AutoConfig.from_pretrained(str(directory))
    text = getattr(config, "text_config", None)
    if text is None or text.model_type not in TEXT_TYPES:
        raise ConfigError(
            f"fuser vmllm: {directory} is not a CLIP or SigLIP checkpoint with a text tower "
            f"(model_type {config.model_type!r})"
        )
    projection = config.projection_dim if text.model_type == "clip_text_model" else None
    return {"text_tower": text.to_dict(), "projection_dim": projection}


def text_state(directory: Path, projections: bool) -> dict[str, torch.Tensor]:
    """The fuser's ``text.*`` (and ``projection.*``) tensors from a full CLIP/SigLIP checkpoint."""
    from ..tensor_files import TensorFile, weight_files

    names = {
        "visual_projection.weight": "projection.visual.weight",
        "text_projection.weight": "projection.text.weight",
    }
    state = {}
    for file in weight_files(directory):
        with TensorFile(file) as handle:
            for key in handle.keys():
                if key.startswith("text_model.") and not key.endswith("position_ids"):
                    state["text." + key.removeprefix("text_model.")] = handle.get(key)
                elif projections and key in names:
                    state[names[key]] = handle.get(key)
    return state


def load_text_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except ImportError:
        raise ConfigError(
            f"{directory}: SigLIP's text tokenizer needs sentencepiece: pip install 'fovea[vmllm]'"
        ) from None
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{directory}: the text tokenizer cannot be loaded ({str(err).splitlines()[0]})"
        ) from None
