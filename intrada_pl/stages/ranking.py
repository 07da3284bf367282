"""The old path of :class:`intrada_pl.ranking.RankingCallback`: configs name it as
``class_path: intrada_pl.stages.ranking.RankingCallback``, and keep working."""

from intrada_pl.ranking.callback import RankingCallback

__all__ = ["RankingCallback"]
