"""The 4M-style multimodal encoder-decoder.

Every modality becomes N = (image_size / patch)² tokens: pixel inputs through a linear patch embedding,
discrete ones (tokenizer codes) through an embedding table. A modality may enter as pixels and be
predicted as codes (4M's RGB: pixel patches in, RGB tokenizer codes as targets). Each token gets a learned
modality embedding and a fixed 2D sin-cos position. The encoder sees only the selected input tokens; the
decoder gets one query per target token (mask token + modality + position), attends to the other
queries of its modality and cross-attends to the encoder, and each modality's output adapter turns its
queries into predictions (pixels of the patch, or code logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tst.errors import TSTError

from tst.layers import FAMILIES, Block, ModelConfig, block_options, sincos_2d

from tst.pretrain.masking import TokenSelection


@dataclass(frozen=True)
class ModalityIO:
    """How a modality enters and leaves the model.

    reads: "pixels" (patch values in), "tokens" (code ids in) or "nothing" (a target-only modality, such
    as a teacher's features); predicts: "pixels" (patch values out), "tokens" (code logits out) or
    "features" (one vector per token). in_channels: channels per pixel on input (pixel reads);
    out_channels: predicted values per pixel (pixel predictions, e.g. class count for label maps) or per
    token (features); vocab: code count (token reads or predictions)."""

    name: str
    reads: str
    predicts: str
    in_channels: int = 0
    out_channels: int = 0
    vocab: int = 0


class MultimodalMaskedModel(nn.Module):
    """Encoder-decoder over the tokens of several modalities (see the module docstring)."""

    def __init__(self, config: ModelConfig, modalities: list[ModalityIO]):
        super().__init__()
        if config.family not in FAMILIES:
            raise TSTError(f"model.family: expected one of {', '.join(FAMILIES)}, got {config.family!r}")
        self.config, self.modalities = config, list(modalities)
        self.names = [m.name for m in modalities]
        p2, dim = config.patch ** 2, config.dim
        self.input_adapters = nn.ModuleDict({
            m.name: nn.Linear(p2 * m.in_channels, dim) if m.reads == "pixels" else nn.Embedding(m.vocab, dim)
            for m in modalities if m.reads != "nothing"})
        outputs = {"pixels": lambda m: p2 * m.out_channels, "tokens": lambda m: m.vocab, "features": lambda m: m.out_channels}
        self.output_adapters = nn.ModuleDict({m.name: nn.Linear(dim, outputs[m.predicts](m)) for m in modalities})
        self.modality_embedding = nn.Parameter(torch.randn(len(modalities), dim) * 0.02)
        four_m = config.family == "4m"
        self.register_buffer("position", sincos_2d(config.grid, config.grid, dim, row_first=four_m), persistent=False)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        options = block_options(config)
        self.encoder = nn.ModuleList(Block(dim, config.heads, config.mlp_ratio, **options)
                                     for _ in range(config.encoder_depth))
        self.encoder_norm = nn.LayerNorm(dim, eps=options["eps"])
        # 4M: the decoder's queries carry their own modality embeddings (4M's RGB target `tok_rgb` is another
        # modality than its pixel input `rgb`), and it reads proj(encoder output) + the inputs' embeddings.
        self.target_modality_embedding = nn.Parameter(torch.randn(len(modalities), dim) * 0.02) if four_m else None
        self.context_projection = nn.Linear(dim, dim) if four_m else None
        self.decoder = nn.ModuleList(Block(dim, config.heads, config.mlp_ratio, cross=True, **options)
                                     for _ in range(config.decoder_depth))
        self.decoder_norm = nn.LayerNorm(dim, eps=options["eps"])
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def token_embeddings(self) -> torch.Tensor:
        """(M*N, D) the modality plus position embedding of every token, in embed()'s order."""
        return (self.modality_embedding[:, None] + self.position[None]).reshape(-1, self.config.dim)

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """inputs: name -> (B, N, patch*patch*C) patches or (B, N) code ids (modalities that are only
        predicted may be left out) -> (B, M*N, D) tokens with modality and position embeddings."""
        tokens = []
        reference = next(iter(inputs.values()))
        for index, name in enumerate(self.names):
            if name in inputs:
                content = self.input_adapters[name](inputs[name])
            else:  # a target-only modality: its tokens are never selected as inputs
                content = reference.new_zeros(reference.shape[0], self.config.tokens_per_modality, self.config.dim,
                                              dtype=self.mask_token.dtype)
            tokens.append(content + self.modality_embedding[index] + self.position)
        return torch.cat(tokens, dim=1)

    def encode(self, tokens: torch.Tensor, selection: TokenSelection) -> torch.Tensor:
        """tokens (B, M*N, D), selection.inputs (B, I) -> encoder output (B, I, D)."""
        return self.encode_all(torch.gather(tokens, 1, selection.inputs[..., None].expand(-1, -1, tokens.shape[-1])))

    def encode_all(self, x: torch.Tensor) -> torch.Tensor:
        """Every token of x (B, I, D) through the encoder -> (B, I, D). No index tensors: the form
        torch.export and ONNX take for a fixed set of input modalities."""
        for block in self.encoder:
            x = block(x)
        return self.encoder_norm(x)

    def modality_tokens(self, tokens: torch.Tensor, names: list[str]) -> torch.Tensor:
        """The (B, len(names)*N, D) tokens of `names`, in that order, out of embed()'s (B, M*N, D)."""
        N = self.config.tokens_per_modality
        return torch.cat([tokens[:, self.names.index(n) * N:(self.names.index(n) + 1) * N] for n in names], dim=1)

    def decode(self, memory: torch.Tensor, selection: TokenSelection) -> torch.Tensor:
        """memory (B, I, D) -> (B, T, D) one vector per target token; self-attention within a modality.
        (family 4m: the decoder reads context_projection(memory) plus the input tokens' embeddings.)"""
        N = self.config.tokens_per_modality
        positions = self.position[selection.targets % N]
        targets = self.modality_embedding if self.target_modality_embedding is None else self.target_modality_embedding
        queries = self.mask_token + targets[selection.target_modality] + positions
        same_modality = selection.target_modality[:, :, None] == selection.target_modality[:, None, :]
        if self.context_projection is not None:
            memory = self.context_projection(memory) + self.token_embeddings()[selection.inputs]
        x = queries
        for block in self.decoder:
            x = block(x, memory, same_modality)
        return self.decoder_norm(x)

    def predict(self, hidden: torch.Tensor, selection: TokenSelection) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per target modality: (predictions (K, out), (K, 2) [batch row, token index within the modality])."""
        N = self.config.tokens_per_modality
        outputs = {}
        for index, name in enumerate(self.names):
            where = selection.target_modality == index
            if not where.any():
                continue
            rows = where.nonzero()[:, 0]
            outputs[name] = (self.output_adapters[name](hidden[where]),
                             torch.stack([rows, selection.targets[where] - index * N], dim=1))
        return outputs

    def forward(self, inputs: dict[str, torch.Tensor], selection: TokenSelection):
        tokens = self.embed(inputs)
        return self.predict(self.decode(self.encode(tokens, selection), selection), selection)
