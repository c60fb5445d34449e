"""The physics: k-space motion, the motion score and its convention.

:mod:`.motion` simulates TorchIO's motion model and builds the head poses, :mod:`.score` holds
the score and its :class:`~motionqc.physics.score.ScoreConvention`, :mod:`.transforms` the TorchIO
transforms and :mod:`.device` the batches on the training device.
"""
