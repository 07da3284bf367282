"""``intrada toy-data OUT --check-ranking RANKING_DIR``: did the entropy ranking find the toy
data's generated hard (rainy/night) images? The toy data knows which they are; the ranking folder
is read as the intra-domain stage reads it."""

from __future__ import annotations

from pathlib import Path

from intrada_pl.data.ranking_manifest import read_ranking
from intrada_pl.data.toy import generated_hard_images
from intrada_pl.ranking.quality import check_hard_list, hard_list_report


def ranking_recall(toy_root: str | Path, ranking_dir: str | Path) -> dict:
    """How well an entropy ranking found the generated hard train images
    (:func:`~intrada_pl.ranking.quality.hard_list_report`): ``found`` of ``generated_hard`` in its
    ``ranked_hard`` images, recall, precision, ``chance`` (what a random split of the same sizes
    finds on average) and the AUROC of the scores in ``scores.csv`` (without it, of the rank:
    ``easy.txt`` then ``hard.txt`` list the images in ascending score order). A ranking of
    other images than the toy data's is refused."""
    generated = generated_hard_images(toy_root)
    manifest = read_ranking(ranking_dir, "--check-ranking")
    scores = manifest.scores or {name: float(rank) for rank, name in enumerate(manifest.order)}
    check_hard_list(generated, manifest.order, f"the generated hard images of {toy_root} (toy_meta.json)")
    report = hard_list_report(scores, manifest.hard, generated)
    return {
        "generated_hard": len(generated),
        "ranked_hard": len(manifest.hard),
        "found": report["found"],
        "recall": report["recall"],
        "precision": report["precision"],
        "chance": report["chance_found"],
        "auroc": report["auroc"],
    }
