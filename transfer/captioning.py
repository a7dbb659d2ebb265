"""Image captioning on a backbone's feature map: a word vocabulary, a small transformer decoder that
cross-attends to the image features, its teacher-forced loss, and greedy / beam-search decoding."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tst.layers import sincos_2d

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(len(SPECIALS))

# A word (letters/digits, with inner apostrophes or hyphens: "don't", "left-hand") or one punctuation mark.
_TOKEN = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")
_WORD_CHAR = re.compile(r"\w")
_ATTACH_LEFT = set(".,;:!?)]}%")  # no space before these when decoding
_ATTACH_RIGHT = set("([{")  # no space after these


def tokenize(text: str) -> list[str]:
    """Lowercase words and punctuation marks, each its own token:
    "A bed, two lamps." -> ["a", "bed", ",", "two", "lamps", "."]."""
    return _TOKEN.findall(text.lower())


def words(text: str) -> list[str]:
    """`tokenize` without the punctuation marks (what caption metrics compare)."""
    return [token for token in tokenize(text) if _WORD_CHAR.match(token)]


def detokenize(tokens: Iterable[str]) -> str:
    """Join tokens with spaces, except before closing punctuation and after opening brackets:
    ["a", "bed", "and", "a", "lamp", "."] -> "a bed and a lamp."."""
    text = ""
    for token in tokens:
        if text and token not in _ATTACH_LEFT and text[-1] not in _ATTACH_RIGHT:
            text += " "
        text += token
    return text


class Vocabulary:
    """Word-level vocabulary. Ids 0..3 are <pad>, <bos>, <eos>, <unk>; the words follow, most frequent
    first (ties alphabetical, so the ids only depend on the captions)."""

    pad, bos, eos, unk = PAD, BOS, EOS, UNK

    def __init__(self, tokens: Sequence[str]):
        """tokens: every token in id order, the four specials first (as `to_dict` stores them)."""
        if tuple(tokens[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}, got {list(tokens[:len(SPECIALS)])}")
        self.tokens = list(tokens)
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        if len(self.ids) != len(self.tokens):
            raise ValueError("a vocabulary lists each token once")

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        """The tokens that occur at least `min_count` times in the (training) captions."""
        counts = Counter(token for caption in captions for token in tokenize(caption))
        kept = sorted((token for token, n in counts.items() if n >= min_count and token not in SPECIALS),
                      key=lambda token: (-counts[token], token))
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, caption: str, max_length: int | None = None) -> list[int]:
        """Ids of <bos>, the caption's tokens (unknown ones -> <unk>), <eos>. With `max_length` (>= 2)
        the tokens are cut so the whole sequence fits, and it still ends with <eos>."""
        ids = [self.ids.get(token, UNK) for token in tokenize(caption)]
        if max_length is not None:
            if max_length < 2:
                raise ValueError(f"max_length must leave room for <bos> and <eos>, got {max_length}")
            ids = ids[:max_length - 2]
        return [BOS, *ids, EOS]

    def encode_batch(self, captions: Sequence[str], max_length: int | None = None) -> torch.Tensor:
        """(B, L) int64 of `encode`d captions, right-padded with <pad> to the longest one."""
        encoded = [self.encode(caption, max_length) for caption in captions]
        batch = torch.full((len(encoded), max(map(len, encoded))), PAD, dtype=torch.long)
        for row, ids in zip(batch, encoded):
            row[:len(ids)] = torch.tensor(ids)
        return batch

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The caption up to the first <eos>, special tokens dropped: [1, 5, 9, 6, 5, 7, 8, 2] ->
        "a bed and a lamp."."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        tokens = []
        for i in ids:
            if i == EOS:
                break
            if i >= len(SPECIALS):
                tokens.append(self.tokens[i])
        return detokenize(tokens)

    def to_dict(self) -> dict:
        """JSON-serializable; `Vocabulary.from_dict` restores it."""
        return {"tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        return cls(data["tokens"])


class CaptionDecoder(nn.Module):
    """A small causal transformer decoder over caption tokens, cross-attending to image features.

    Features: a feature map (B, feature_dim, g, g) as the backbones give (flattened to g*g tokens, plus
    2D sincos positions, so any grid size works), or tokens (B, N, feature_dim), or a pooled vector
    (B, feature_dim). Tokens: (B, L) int64 vocabulary ids, <bos> first, <pad> (id 0) after <eos>;
    L <= max_length."""

    def __init__(self, feature_dim: int, vocab_size: int, width: int = 128, depth: int = 2, heads: int = 4,
                 max_length: int = 40, dropout: float = 0.1):
        super().__init__()
        self.width, self.max_length = width, max_length
        self.project = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, width))
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(max_length, width) * 0.02)
        layer = nn.TransformerDecoderLayer(width, heads, 4 * width, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(layer, depth)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def memory(self, features: torch.Tensor) -> torch.Tensor:
        """Image features -> the tokens the captions attend to: (B, N, width)."""
        if features.dim() == 4:
            B, C, H, W = features.shape
            tokens = self.project(features.flatten(2).transpose(1, 2))
            return tokens + sincos_2d(H, W, self.width).to(tokens)
        if features.dim() == 2:
            features = features[:, None]
        return self.project(features)

    def decode(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """memory (B, N, width), tokens (B, L) -> next-token logits (B, L, vocab): position i predicts
        token i + 1 from tokens 0..i only."""
        L = tokens.shape[1]
        if L > self.max_length:
            raise ValueError(f"captions of {L} tokens are longer than the decoder's max_length {self.max_length}")
        x = self.embed(tokens) + self.position[:L]
        causal = torch.ones(L, L, dtype=torch.bool, device=tokens.device).triu(1)  # True: may not attend
        x = self.blocks(x, memory, tgt_mask=causal, tgt_is_causal=True, tgt_key_padding_mask=tokens == PAD)
        return self.head(self.norm(x))

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """features (B, feature_dim, g, g) (or see the class doc), tokens (B, L) -> logits (B, L, vocab)."""
        return self.decode(self.memory(features), tokens)

    # --- incremental decoding with key/value caches (generation; exported for deployment) ----------------
    # nn.TransformerDecoder recomputes every earlier position at each generated token. These two methods run
    # the same layers (same weights, eval mode) one position at a time on caches of fixed size, so a
    # caption of T tokens costs T one-token steps, and the step has static shapes for torch.export / ONNX.

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(R, L, width) -> (R, heads, L, width / heads)."""
        heads = self.blocks.layers[0].self_attn.num_heads
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)

    def cross_cache(self, memory: torch.Tensor) -> torch.Tensor:
        """memory (R, N, width) -> the cross-attention keys and values of every layer, computed once per
        image: (2, depth, R, heads, N, width / heads)."""
        width, kv = self.width, []
        for layer in self.blocks.layers:
            weight, bias = layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias
            kv.append(torch.stack([self._split_heads(F.linear(memory, weight[width:2 * width], bias[width:2 * width])),
                                   self._split_heads(F.linear(memory, weight[2 * width:], bias[2 * width:]))]))
        return torch.stack(kv, 1)

    def empty_self_cache(self, rows: int, device: torch.device | None = None) -> torch.Tensor:
        """Zeroed self-attention keys and values for `rows` sequences: (2, depth, rows, heads, max_length,
        width / heads)."""
        layer = self.blocks.layers[0]
        heads = layer.self_attn.num_heads
        return torch.zeros(2, len(self.blocks.layers), rows, heads, self.max_length, self.width // heads,
                           device=device, dtype=self.head.weight.dtype)

    def step(self, tokens: torch.Tensor, position: torch.Tensor, self_cache: torch.Tensor,
             cross: torch.Tensor | tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """One generated position for R sequences: tokens (R,) int64 at `position` (a 0-d int64 tensor,
        < max_length), self_cache as `empty_self_cache` gives it holding positions 0..position-1, cross as
        `cross_cache` gives it or as a pair (keys, values) of depth (R, heads, N, d) tensors each (how the
        exported graphs pass it, deploy/export.py) -> (next-token logits (R, vocab), self_cache with this
        position written). Equals `decode`'s logits at `position` (eval mode).

        The one new position is kept as (R, width) rows and its heads as (R, heads, 1, width / heads), a
        reshape without a transpose: the exported step has a fifth fewer nodes than with (R, 1, width)
        activations (146 -> 116 at tiny's 2 layers), and with a few rows its time is mostly per-node
        overhead (ONNX Runtime, 2 cores: 0.51 -> 0.46 ms a token)."""
        width, rows = self.width, tokens.shape[0]
        heads = self.blocks.layers[0].self_attn.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (R, width) -> (R, heads, 1, width / heads)
            return x.reshape(rows, heads, 1, width // heads)

        slots = torch.arange(self.max_length, device=tokens.device)
        written, visible = (slots == position)[:, None], (slots <= position)[None]  # (max_length, 1), (1, max_length)
        x = self.embed(tokens) + self.position.index_select(0, position.reshape(1))  # (R, width)
        keys, values = [], []
        for index, layer in enumerate(self.blocks.layers):
            attention = layer.self_attn
            q, k, v = F.linear(layer.norm1(x), attention.in_proj_weight, attention.in_proj_bias).chunk(3, -1)
            k = torch.where(written, split(k), self_cache[0, index])  # (R, heads, max_length, d)
            v = torch.where(written, split(v), self_cache[1, index])
            seen = F.scaled_dot_product_attention(split(q), k, v, attn_mask=visible)
            x = x + attention.out_proj(seen.reshape(rows, width))
            cross_attention = layer.multihead_attn
            q = F.linear(layer.norm2(x), cross_attention.in_proj_weight[:width], cross_attention.in_proj_bias[:width])
            seen = F.scaled_dot_product_attention(split(q), cross[0][index], cross[1][index])
            x = x + cross_attention.out_proj(seen.reshape(rows, width))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
            keys.append(k)
            values.append(v)
        return self.head(self.norm(x)), torch.stack([torch.stack(keys), torch.stack(values)])

    def greedy(self, cross: torch.Tensor, max_length: int, min_length: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Greedy decoding from the cross cache of B images (`cross_cache`), up to `max_length` tokens
        (<bos> included): `beam_search` with beam 1, the same tokens (B, T), totals (B,) and lengths (B,),
        one `greedy_step` per token, stopping once every caption has emitted <eos>. Per token this costs
        the step and a few element-wise ops (it runs on the deploy loop's critical path)."""
        B, device = cross.shape[2], cross.device
        self_cache = self.empty_self_cache(B, device)
        last = torch.full((B,), BOS, dtype=torch.long, device=device)
        tokens, total = [last], torch.zeros(B, device=device)
        length = torch.zeros(B, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        banned = [banned_tokens(self.head.out_features, eos_banned, device) for eos_banned in (False, True)]
        for position in range(max_length - 1):
            last, self_cache, total, length, finished = greedy_step(
                self, torch.tensor(position, device=device), last, self_cache, cross, total, length, finished,
                banned[position + 1 < min_length])
            tokens.append(last)
            if finished.all():
                break
        return torch.stack(tokens, 1), total, length


def caption_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced next-token cross-entropy in nats per token, averaged over the non-<pad> targets.
    logits (B, L, vocab) from `decoder(features, tokens)`, tokens (B, L): logits[:, i] predicts tokens[:, i + 1]."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                           ignore_index=PAD)


@torch.no_grad()
def sequence_log_prob(decoder: CaptionDecoder, features: torch.Tensor,
                      tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(total log-probability in nats (B,), generated-token count (B,)) of each caption after its <bos>,
    <eos> included, <pad> ignored. tokens (B, L) as `Vocabulary.encode_batch` or `beam_search` give them.
    Put the decoder in eval mode first."""
    log_probs = decoder(features, tokens)[:, :-1].log_softmax(-1)
    targets = tokens[:, 1:]
    picked = log_probs.gather(-1, targets[..., None])[..., 0]
    real = targets != PAD
    return (picked * real).sum(1), real.sum(1)


@torch.no_grad()
def beam_search(decoder: CaptionDecoder, features: torch.Tensor, beam: int = 1, max_length: int | None = None,
                min_length: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched beam search over images.

    Hypotheses are ranked by length-normalized log-probability (total nats / generated tokens, <eos>
    included); a hypothesis that emits <eos> is finished and keeps its score. The search stops when every
    kept hypothesis is finished or at `max_length` tokens (<bos> included; default and cap: the decoder's).
    With beam == 1 this is greedy decoding (the argmax token at each step; `CaptionDecoder.greedy`).
    <pad>, <bos> and <unk> are never generated, nor <eos> before `min_length` tokens (<bos> included; the
    scores stay the model's own log-probabilities). Each step runs the decoder on one new position per
    hypothesis over key/value caches (`CaptionDecoder.step`); `decoder` is a CaptionDecoder or anything
    with its memory, cross_cache, empty_self_cache, step, greedy and max_length (the exported graphs). Put
    the decoder in eval mode first (`generate` does).

    Returns tokens (B, T) int64 (<bos> first, <pad> after <eos>), total log-probability (B,) in nats and
    generated-token count (B,), for the best hypothesis of each image (a finished one when there is one)."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    max_length = min(max_length or decoder.max_length, decoder.max_length)
    cross = decoder.cross_cache(decoder.memory(features))
    if beam == 1:
        return decoder.greedy(cross, max_length, min_length)
    B, K = cross.shape[2], beam
    cross = cross.repeat_interleave(K, dim=2)  # (2, depth, B*K, heads, N, d), image-major
    device = cross.device
    self_cache = decoder.empty_self_cache(B * K, device)
    sequences = torch.full((B, K, 1), BOS, dtype=torch.long, device=device)
    totals = torch.full((B, K), -math.inf, device=device)
    totals[:, 0] = 0.0  # one live hypothesis to start from
    lengths = torch.zeros(B, K, device=device)
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    # (B*K,) each hypothesis's newest token; a fresh tensor every step, not a view of `sequences`, whose
    # stride changes each step and would make a compiled `step` recompile for every token.
    last = sequences[..., -1].flatten()
    for position in range(max_length - 1):
        logits, self_cache = decoder.step(last, torch.tensor(position, device=device), self_cache, cross)
        log_probs = logits.float().log_softmax(-1)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.masked_fill(banned_tokens(vocab, position + 1 < min_length, device), -math.inf)
        log_probs = log_probs.view(B, K, vocab)
        # A finished hypothesis has a single continuation, <pad>, which costs nothing and adds no length.
        stay = torch.full_like(log_probs, -math.inf)
        stay[..., PAD] = 0.0
        log_probs = torch.where(finished[..., None], stay, log_probs)
        candidate_totals = (totals[..., None] + log_probs).view(B, K * vocab)
        candidate_lengths = (lengths + (~finished)).repeat_interleave(vocab, dim=1)
        chosen = (candidate_totals / candidate_lengths).topk(K, dim=1).indices  # (B, K)
        parent, token = chosen // vocab, chosen % vocab
        totals = candidate_totals.gather(1, chosen)
        lengths = candidate_lengths.gather(1, chosen)
        finished = finished.gather(1, parent) | (token == EOS)
        sequences = torch.cat([sequences.gather(1, parent[..., None].expand_as(sequences)), token[..., None]], 2)
        last = token.flatten()
        rows = (parent + torch.arange(B, device=device)[:, None] * K).flatten()  # each kept hypothesis's parent row
        self_cache = self_cache.index_select(2, rows)
        if finished.all():
            break
    score = totals / lengths
    score = torch.where(finished, score, score - 1e9 * finished.any(1, keepdim=True))  # prefer finished ones
    best = score.argmax(1)
    pick = torch.arange(B, device=device)
    return sequences[pick, best], totals[pick, best], lengths[pick, best]


def banned_tokens(vocab: int, eos_banned: bool | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """(vocab,) bool, True for the tokens decoding may not emit: <pad>, <bos> and <unk>, and <eos> when
    `eos_banned` (a bool or a 0-d bool tensor: fewer than min_length tokens so far)."""
    ids = torch.arange(vocab, device=device)
    return (ids <= UNK) & ((ids != EOS) | eos_banned)  # the specials are ids 0-3


def greedy_step(decoder: CaptionDecoder, position: torch.Tensor, last: torch.Tensor, self_cache: torch.Tensor,
                cross: torch.Tensor, total: torch.Tensor, length: torch.Tensor, finished: torch.Tensor,
                banned: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One greedy token for B captions: the most likely token that `banned` (`banned_tokens`) allows; a
    finished caption continues with <pad> at no cost. position: 0-d int64 (the position of `last`); last
    (B,) int64; self_cache and cross as `CaptionDecoder.step` takes them; total (B,) nats, length (B,)
    generated tokens (float), finished (B,) bool. Returns the next (last, self_cache, total, length,
    finished).

    Written with tensor ops only (no Python branch on values), so the same step runs in the eager loop
    (`CaptionDecoder.greedy`) and inside the exported while-loop graph (deploy/export.py)."""
    logits, self_cache = decoder.step(last, position, self_cache, cross)
    best, token = logits.float().log_softmax(-1).masked_fill(banned, -math.inf).max(-1)
    token = token.masked_fill(finished, PAD)
    total = total + best.masked_fill(finished, 0.0)
    length = length + (~finished).float()
    return token, self_cache, total, length, finished | (token == EOS)


def generate(decoder: CaptionDecoder, features: torch.Tensor, vocabulary: Vocabulary, beam: int = 1,
             max_length: int | None = None) -> list[str]:
    """One caption per image: greedy when beam == 1, else beam search ranked by length-normalized
    log-probability (see `beam_search`). features: as `CaptionDecoder.forward` takes them. The decoder
    runs in eval mode (no dropout) and is put back in its previous mode afterwards."""
    training = decoder.training
    decoder.eval()
    try:
        sequences, _, _ = beam_search(decoder, features, beam, max_length)
    finally:
        decoder.train(training)
    return [vocabulary.decode(ids) for ids in sequences]
