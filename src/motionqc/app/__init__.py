"""The application: command line, scoring pipeline, derivatives and QC report.

:mod:`.cli` is the ``motionqc`` command, :mod:`.scoring` the pipeline behind ``motionqc score`` (a
BIDS-App), :mod:`.derivatives` its output folder and :mod:`.report` the HTML report.
"""
