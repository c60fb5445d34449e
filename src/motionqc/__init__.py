"""motionqc: quality control of brain MRI with synthetic k-space motion.

Companion code to the poster *Improving quality control of MRI images using synthetic motion
data* (Bricout et al.). One module per stage of the pipeline:

- :mod:`motionqc.paths` — where the repository, data, figures and caches live.
- :mod:`motionqc.profiles` — the ``smoke`` / ``sample`` / ``paper`` size knobs.
- :mod:`motionqc.data.sample` — gathers the real sample volumes that install with the project.
- :mod:`motionqc.data.volumes` — manifests, volume loading, preprocessing, BIDS builders, site splits.
- :mod:`motionqc.runner` — runs the numbered notebooks with papermill.
"""

__version__ = "0.1.0"
