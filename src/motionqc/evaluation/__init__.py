"""Evaluation: QC metrics, efficiency, cortical thickness, and the poster's own numbers.

:mod:`.qc_metrics`, :mod:`.efficiency`, :mod:`.thickness` (the estimation), :mod:`.thickness_stats`
(thickness against motion) and :mod:`.poster` (the numbers shown beside ours).
"""
