"""Caption metrics over a whole eval split: BLEU-4, ROUGE-L, CIDEr-D (and optionally METEOR).

The scorers are the COCO caption evaluation ones (the `pycocoevalcap` package). Its `Cider` class is
CIDEr-D as published (Vedantam et al., 2015): n-grams 1..4 without stemming, tf-idf weights with
document frequencies from the eval references, candidate n-gram counts clipped to the reference's,
a Gaussian length penalty (sigma 6), averaged over references and scaled by 10 -- it is the code behind
the COCO leaderboard's "CIDEr-D", so it is used as is.

Captions are tokenized with `tst.transfer.captioning.words` (lowercase, punctuation dropped) instead
of pycocoevalcap's PTBTokenizer, which needs Java.
"""

from __future__ import annotations

import shutil
import warnings

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from tst.transfer.captioning import words


class CaptionScore:
    """Corpus-level caption metrics accumulated over batches.

    bleu4: corpus BLEU-4 (n-gram counts pooled over all images, brevity penalty against the closest
    reference length), 0..1. rougeL: ROUGE-L F (beta 1.2, best reference) averaged over images, 0..1.
    cider_d: CIDEr-D averaged over images, 0..10; its idf comes from all the references seen, so it is
    only meaningful over a whole split (an n-gram in every image's references weighs 0, and with a
    single image every weight is 0). meteor (0..1): only with `meteor=True` and Java on the PATH;
    starting its Java scorer takes ~20 s."""

    def __init__(self, meteor: bool = False):
        self.meteor = meteor
        self._meteor_scorer = None
        self.reset()

    def reset(self) -> None:
        self.predicted: list[str] = []
        self.references: list[list[str]] = []

    def update(self, predicted: list[str], references: list[list[str]]) -> None:
        """predicted: one caption per image; references: the reference captions of each image (>= 1)."""
        if len(predicted) != len(references):
            raise ValueError(f"{len(predicted)} predicted captions for {len(references)} reference lists")
        for caption, refs in zip(predicted, references):
            refs = [" ".join(words(ref)) for ref in refs]
            refs = [ref for ref in refs if ref]
            if not refs:
                raise ValueError("every image needs at least one non-empty reference caption")
            self.predicted.append(" ".join(words(caption)))
            self.references.append(refs)

    def compute(self) -> dict:
        """{"bleu4", "rougeL", "cider_d"[, "meteor"]} over every image seen since the last reset;
        all 0.0 before any update."""
        names = ["bleu4", "rougeL", "cider_d"] + (["meteor"] if self._meteor_available() else [])
        if not self.predicted:
            return {name: 0.0 for name in names}
        ids = range(len(self.predicted))
        candidates = {i: [self.predicted[i]] for i in ids}
        references = {i: self.references[i] for i in ids}
        bleu, _ = Bleu(4).compute_score(references, candidates, verbose=0)
        rouge, _ = Rouge().compute_score(references, candidates)
        cider, _ = Cider().compute_score(references, candidates)
        result = {"bleu4": float(bleu[3]), "rougeL": float(rouge), "cider_d": float(cider)}
        if "meteor" in names:
            if self._meteor_scorer is None:
                from pycocoevalcap.meteor.meteor import Meteor

                self._meteor_scorer = Meteor()
            result["meteor"] = float(self._meteor_scorer.compute_score(references, candidates)[0])
        return result

    def _meteor_available(self) -> bool:
        if not self.meteor:
            return False
        if shutil.which("java") is None:
            warnings.warn("CaptionScore(meteor=True): no `java` on the PATH, METEOR is left out", stacklevel=3)
            return False
        return True
