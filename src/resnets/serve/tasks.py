"""Each task's hooks on the one Service (service.py): a classifier (predict, embed, and Grad-CAM in a lane of its
own), a detector and a segmenter. Each says its class names, how an upload is decoded for its model, how images
make a batch, how a batch runs and its output becomes one row per image, and what /v1/model says of it."""

from __future__ import annotations

import copy
import io
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import detect, segment
from ..data.datasets import BadSample, decode_sized
from ..devices import autocast, check_precision
from ..errors import ResnetsError
from ..meta import preprocessing_for, traits_of
from ..tasks.base import class_count
from .admission import Job
from .batcher import Lane
from .limits import HTTPFailure
from .service import Service, refusal

# a pixel is in an instance's mask where the mask's probability is over this (torchvision's and COCO's evaluation)
MASK_THRESHOLD = 0.5
# the score a box needs to be kept by /v1/detect when the request does not say (?score=), as `resnets detect`
SCORE_THRESHOLD = 0.5
# Grad-CAM's backward pass and hook, in forward passes of one image: the lane's estimate of time until it has timed
# one itself (an estimate falls smoothly towards what is measured)
CAM_FORWARDS = 3.0


class ClassifierService(Service):
    """A classifier: each image decoded, resized and cropped as the model's preprocessing says (uint8), stacked into
    batches run by any backend (eager, compile, ONNX Runtime, int8); the batch gives pooled features (predict
    applies the classifier, embed returns them) or, for an ONNX file, logits. Grad-CAM (explain) runs one image at a
    time on a copy of the model in a lane of its own, under the same admission."""

    task = "classification"
    route, purpose = "POST /v1/predict", "classify, embed and explain images."

    def __init__(self, model: nn.Module, *, backend: str, precision: str, calib_images=None, **settings):
        from ..backends import auto_backend, make_runner

        super().__init__(model, backend=backend, precision=precision, **settings)
        self.pre = preprocessing_for(self.model)
        self.transform, self.normalize = self.pre.transform(), self.pre.normalizer()
        self.input_shape = (len(self.pre.mean), self.pre.crop, self.pre.crop)  # (C, H, W) of one uint8 image
        self.backend = auto_backend(self.device, precision) if backend == "auto" else backend
        if self.model.num_features is None and backend in ("auto", "eager"):  # an ONNX file runs as it is
            self.backend = "onnxruntime"
        # the batch gives pooled features (predict applies the classifier, embed returns them); an ONNX file gives
        # its logits, and serves predict only
        self.features = self.model.num_features is not None
        self.runner = make_runner(
            self.model,
            self.backend,
            output="features" if self.features else "logits",
            calib=self._calibration(calib_images),
            precision=precision,
            device=self.device,
        )
        self.lane = Lane(self.limits.max_queue, "resnets-explain")
        self._explain_model: nn.Module | None = None

    def _calibration(self, images: list[str] | None):
        """The onnxruntime-int8 backend's static quantisation: batches of real images, before serving."""
        if self.backend != "onnxruntime-int8":
            return None
        if not images:
            raise ResnetsError("the onnxruntime-int8 backend calibrates on real images: give them with --calib DIR")
        from ..inference import calibration_batches, find_images

        calib = calibration_batches(self.model, find_images(images))
        if not calib:
            raise ResnetsError("no calibration image could be read")
        return calib

    def class_names(self) -> list[str]:
        return self.meta.names(self.model.num_classes)

    def decode_size(self) -> int:
        return self.pre.resize

    def model_pixels(self, width: int, height: int) -> int:
        """The crop, whatever the image's size."""
        return self.input_shape[1] * self.input_shape[2]

    def decode(self, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
        try:
            raw, full = decode_sized(
                data, name, len(self.pre.mean), max_pixels=self.limits.max_pixels, size=self.decode_size()
            )
        except BadSample as e:
            raise refusal(e, name) from None
        image = self.transform(raw)
        if tuple(image.shape) != self.input_shape:  # checked here, so no image can break a batch it joins
            raise HTTPFailure(
                422,
                f"{name}: the image became {tuple(image.shape)}, not the model's input {self.input_shape}",
                kind="corrupt_image",
            )
        return image, full

    def collate(self, images: list[torch.Tensor]) -> torch.Tensor:
        """(B, C, crop, crop) uint8, normalised on the device in `forward`; with an image given already normalised
        (float: the Open Inference Protocol's FP32 input) in the batch, float, each uint8 one normalised here."""
        if all(im.dtype == torch.uint8 for im in images):
            return torch.stack(images)
        return torch.stack([self.normalize(im[None])[0] if im.dtype == torch.uint8 else im for im in images])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """A batch (`collate`'s) -> pooled features (B, num_features) (or an ONNX file's logits)."""
        x = images.to(self.device, non_blocking=True)
        return self.runner(x if x.is_floating_point() else self.normalize(x))

    def rows(self, out: torch.Tensor) -> torch.Tensor:
        return out.float().cpu()

    def warm_image(self) -> torch.Tensor:
        return torch.zeros(*self.input_shape, dtype=torch.uint8)

    def warm_up(self) -> None:
        super().warm_up()
        if self.lane.seconds_per_pixel is None and self.batcher.seconds_per_pixel is not None:
            self.lane.seconds_per_pixel = CAM_FORWARDS * self.batcher.seconds_per_pixel

    async def start(self) -> None:
        self.lane.start()
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.lane.stop()

    def need_features(self, what: str) -> None:
        if not self.features:
            raise HTTPFailure(
                400,
                f"{what} needs the PyTorch model; this server runs an ONNX file, which gives class "
                "scores only (/v1/predict)",
            )

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if not self.features:  # the runner's rows are logits already
            return features
        fc = self.model.get_classifier()
        with torch.no_grad():
            return fc(features.to(next(fc.parameters()).device)).float().cpu() if self.model.num_classes else features

    def model_info(self) -> dict[str, Any]:
        return {
            "num_classes": self.model.num_classes,
            "classes": self.names,
            "num_features": self.model.num_features,
            "preprocessing": self.pre.to_dict(),
        }

    def explainer(self) -> nn.Module:
        """Grad-CAM's own copy of the model (made on first use): its hook and backward pass must not touch the
        module the batches run through at the same time (the eager runner shares it)."""
        if self._explain_model is None:
            self._explain_model = copy.deepcopy(self.model).float().eval()
        return self._explain_model

    async def explain(self, image: torch.Tensor, target: int | None, job: Job) -> tuple[bytes, int, float]:
        """Grad-CAM of one decoded image, run in the lane (one at a time): the PNG, the class, its probability;
        503 without running when the lane's queue made it late."""
        self.admission.queued(job)
        return await self.lane.submit(
            lambda: self.overlay(image, target), self.cost(image), deadline=job.deadline, job=job
        )

    def overlay(self, image: torch.Tensor, target: int | None) -> tuple[bytes, int, float]:
        """Grad-CAM over the crop the model saw, as PNG bytes (the photo, with the heatmap blended in)."""
        from matplotlib import colormaps
        from PIL import Image

        from ..inference import grad_cam

        cam, cls, prob = grad_cam(self.explainer(), self.normalize(image.to(self.device)), target=target)
        rgb = image.permute(1, 2, 0).numpy()
        rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
        heat = colormaps["jet"](cam.cpu().numpy())[..., :3] * 255
        blended = (0.55 * rgb + 0.45 * heat).round().clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(blended).save(buf, format="PNG")
        return buf.getvalue(), cls, prob


class DetectorService(Service):
    """A detector: each image decoded no larger than twice the model's input and brought in uint8 to the size the
    model's transform resizes it to (min_size / max_size: no float copy of a large photo), a list of images of any
    size per batch, run eagerly; boxes, labels, scores (and masks over MASK_THRESHOLD) out per image."""

    task = "detection"
    route, purpose = "POST /v1/detect", "find objects in images."

    def __init__(self, model: nn.Module, *, backend: str, precision: str, calib_images=None, **settings):
        eager_only("a detector", backend, calib_images)
        super().__init__(model, backend="eager", precision=precision, **settings)
        check_precision(precision, self.device)

    def class_names(self) -> list[str]:
        return detect.class_names(self.model)

    def classes_counted(self) -> str:
        return class_count(len(self.names) - 1, background=True)  # names[0] is the background

    def decode_size(self) -> tuple[int, int]:
        return detect.input_size(self.model)

    def model_pixels(self, width: int, height: int) -> int:
        h, w = detect.scaled_size(width, height, *self.decode_size())
        return h * w

    def decode(self, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
        """The image as the model takes it (RGB uint8, decoded and resized no larger than the model's input:
        detect.model_input) and its full (width, height), or HTTPFailure."""
        try:
            return detect.model_input(data, name, *self.decode_size(), max_pixels=self.limits.max_pixels)
        except BadSample as e:
            raise refusal(e, name) from None

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        """uint8 images (3, H, W) -> the detector's output for each, in the coordinates of the image given."""
        with autocast(self.device, self.amp):
            return self.model([im.to(self.device).float() / 255 for im in images])

    def rows(self, outs: list[dict]) -> list[dict]:
        """On the CPU, boxes and scores in float32, masks as booleans."""
        rows = []
        for o in outs:
            row = {k: o[k].float().cpu() if k != "labels" else o[k].cpu() for k in ("boxes", "labels", "scores")}
            if "masks" in o:
                row["masks"] = (o["masks"][:, 0] > MASK_THRESHOLD).cpu()
            rows.append(row)
        return rows

    def input(self) -> dict[str, Any]:
        t = self.model.transform
        return {"min_size": list(t.min_size), "max_size": t.max_size}


class SegmenterService(Service):
    """A segmenter (FCN, DeepLabV3): each image decoded no larger than twice the model's input and brought in uint8
    to it (segment.model_input: the shorter side at `size`, the longer at most twice that), its class map out at
    that size (the image's own when it is smaller)."""

    task = "segmentation"
    route, purpose = "POST /v1/segment", "the class of every pixel of images."
    size = 520  # torchvision's evaluation size for these models

    def __init__(self, model: nn.Module, *, backend: str, precision: str, calib_images=None, **settings):
        eager_only("a segmenter", backend, calib_images)
        super().__init__(model, backend="eager", precision=precision, **settings)
        check_precision(precision, self.device)

    def class_names(self) -> list[str]:
        return segment.class_names(self.model)

    def classes_counted(self) -> str:
        return class_count(len(self.names), background=False)  # the background is one of them

    def decode_size(self) -> tuple[int, int]:
        return self.size, 2 * self.size

    def model_pixels(self, width: int, height: int) -> int:
        h, w = segment.input_size(width, height, self.size)
        return h * w

    def decode(self, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
        try:
            return segment.model_input(data, name, self.size, max_pixels=self.limits.max_pixels)
        except BadSample as e:
            raise refusal(e, name) from None

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return [segment.class_map(self.model, im, self.size, self.amp) for im in images]

    def input(self) -> dict[str, Any]:
        return {"shorter_side": self.size, "longer_side_at_most": 2 * self.size, "normalised": "ImageNet mean and std"}


def eager_only(what: str, backend: str, calib_images) -> None:
    """A detector or segmenter runs eagerly (its images come in any size): another backend is refused."""
    if backend not in ("auto", "eager") or calib_images:
        raise ResnetsError(f"{what} is served by the eager backend (PyTorch); got --backend {backend}")


SERVICES = (ClassifierService, DetectorService, SegmenterService)  # one a task, by its `task`


def service_for(model: nn.Module) -> type[Service]:
    """The Service of the model's task."""
    task = traits_of(model).name
    return next(s for s in SERVICES if s.task == task)
