"""TorchIO transforms backed by :func:`motionqc.physics.motion.simulate_motion`.

:class:`MotionTransform` is a drop-in replacement for ``tio.Motion`` (linear interpolation) and
:class:`RandomMotionTransform` for ``tio.RandomMotion``, with TorchIO's own parameter draws. They
live apart from :mod:`motionqc.physics.motion`, which needs only torch and numpy (its ``torch`` backend
runs on a GPU machine without TorchIO or SimpleITK: ``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import torchio as tio

from motionqc.physics.motion import BACKENDS, simulate_motion

__all__ = ["MotionTransform", "RandomMotionTransform"]


class MotionTransform(tio.IntensityTransform):
    """Drop-in replacement for ``tio.Motion`` (linear interpolation) backed by :func:`simulate_motion`.

    Args:
        degrees: (n, 3) rotations in degrees, or a dict image name → array.
        translation: (n, 3) translations in mm, or a dict image name → array.
        times: (n,) times in [0, 1], or a dict image name → array.
        backend: See :func:`simulate_motion`.
        **kwargs: See ``torchio.transforms.Transform``.
    """

    def __init__(
        self,
        degrees: object,
        translation: object,
        times: object,
        backend: str = "auto",
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.degrees = degrees
        self.translation = translation
        self.times = times
        self.backend = backend
        self.args_names = ["degrees", "translation", "times", "backend"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        """Corrupt every intensity image of the subject (each channel with the same motion)."""
        for name, image in self.get_images_dict(subject).items():
            deg = self.get_parameter(self.degrees, name)
            tra = self.get_parameter(self.translation, name)
            tim = self.get_parameter(self.times, name)
            data = image.data
            out = simulate_motion(data, deg, tra, tim, image.affine, backend=self.backend)
            image.set_data(out.to(data.device))
        return subject


class RandomMotionTransform(tio.RandomMotion):
    """``tio.RandomMotion`` with the same parameter draws, applied by :class:`MotionTransform`.

    Args:
        degrees: See ``tio.RandomMotion``.
        translation: See ``tio.RandomMotion``.
        num_transforms: See ``tio.RandomMotion``.
        backend: See :func:`simulate_motion`.
        image_interpolation: Only ``"linear"``: the k-space model reproduces
            ``tio.Motion(image_interpolation="linear")`` exactly and no other interpolation.
        **kwargs: See ``torchio.transforms.Transform``.

    Raises:
        ValueError: For an ``image_interpolation`` other than ``"linear"``.
    """

    def __init__(
        self,
        degrees: float | tuple[float, float] = 10,
        translation: float | tuple[float, float] = 10,
        num_transforms: int = 2,
        backend: str = "auto",
        image_interpolation: str = "linear",
        **kwargs: object,
    ) -> None:
        if image_interpolation != "linear":
            raise ValueError(
                f"image_interpolation must be 'linear' (the only interpolation the k-space model "
                f"reproduces exactly), got {image_interpolation!r}; use tio.RandomMotion for others"
            )
        super().__init__(
            degrees, translation, num_transforms, image_interpolation="linear", **kwargs
        )
        self.backend = backend

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        """Draw parameters per image as TorchIO does, then apply them."""
        args: dict[str, dict[str, object]] = {"degrees": {}, "translation": {}, "times": {}}
        for name, image in self.get_images_dict(subject).items():
            times, degrees, translation = self.get_params(
                self.degrees_range, self.translation_range, self.num_transforms, is_2d=image.is_2d()
            )
            args["times"][name], args["degrees"][name] = times, degrees
            args["translation"][name] = translation
        transform = MotionTransform(**args, backend=self.backend, **self._get_base_args())
        return transform(subject)
