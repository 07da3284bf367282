"""Stage 2 of IntraDA: rank the target's training images by entropy and split them (REFERENCE A4).

``intrada predict --config configs/rank_gta5.yaml --ckpt_path CKPT`` runs the inter-domain model
over the target's train split with :class:`RankingCallback` attached. The callback turns every
batch of main-head logits into compact per-image results on the device (a score and a
PNG-encoded pseudo-label) and, once every image is scored, writes what the intra-domain stage
(:class:`intrada_pl.data.datamodules.SplitDataModule`) reads::

    <output_dir>/ranking/
      scores.csv         name,score,rank,split (ascending score; rank 1 = lowest entropy)
      easy.txt           the lowest int(N * lambda_) images, the reference's list format
      hard.txt           the others
      pseudo_labels/     argmax train IDs of the easy images, <name> with a .png extension
      summary.json       lambda_, normalize, counts, checkpoint, hard_list
      histogram.png      the score distribution with the lambda cut
      quality.json       how good is the ranking? score stats; with labels, Spearman of score vs
                         per-image mIoU and the easy/hard pseudo-label quality; with a hard_list,
                         how many of its names were ranked, AUROC, recall, precision
      quality.png        its figure, when there are labels or a hard_list

The folder's format (the first five) is :mod:`intrada_pl.data.ranking_manifest`, its one writer
and reader. ``--ckpt_path`` may also be a released ADVENT ``.pth`` (a bare state dict): the CLI
loads it into the configured module (:class:`intrada_pl.cli.lightning.TrainingCLI`).

One module per job: :mod:`.scores` (per-image scores, the easy/hard split), :mod:`.quality`
(the quality report), :mod:`.callback` (:class:`RankingCallback`), :mod:`.toy_check`
(``intrada toy-data --check-ranking``).
"""

from typing import Any

from intrada_pl.ranking.quality import RankingQuality
from intrada_pl.ranking.scores import Ranking, entropy_scores, num_easy, pseudo_labels, rare_class_factor
from intrada_pl.ranking.toy_check import ranking_recall

__all__ = ["Ranking", "RankingCallback", "RankingQuality", "entropy_scores", "num_easy", "pseudo_labels",
           "rare_class_factor", "ranking_recall"]


def __getattr__(name: str) -> Any:
    """``intrada_pl.ranking.RankingCallback`` on first use: the callback needs Lightning, the
    ranking's other parts (``intrada toy-data --check-ranking``, which starts without it) do not."""
    if name == "RankingCallback":
        from intrada_pl.ranking.callback import RankingCallback

        return RankingCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
