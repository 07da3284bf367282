"""What an evaluation leaves besides its numbers: the prediction files (:class:`PredictionWriter`)
and the report (:class:`EvaluationReport`: ``metrics.json``, ``confusion.json``, reliability
diagrams, the console table, the dashboards), callbacks fed by the
:class:`~intrada_pl.stages.evaluation.Evaluator`, which scores only (:class:`EvaluationResults`)."""

from intrada_pl.evaluation.predictions import PredictionWriter
from intrada_pl.evaluation.report import EvaluationReport, format_results_table
from intrada_pl.evaluation.results import EvaluationResults

__all__ = ["EvaluationReport", "EvaluationResults", "PredictionWriter", "format_results_table"]
