"""Training: the trainer, the encoder's recipe and release, the QC head and the baseline.

:mod:`.trainer` (the generic loop), :mod:`.recipe` (the pretraining recipe), :mod:`.release`
(``make pretrain``) and :mod:`.transfer` (the QC head on embeddings, SFCN from scratch).
"""
