"""The training loop: `train(cfg)` builds everything from a config, trains, evaluates and returns the metrics.

Split as torchvision's reference script and timm's train.py are: a `Run` built once from the config
(`build_run`: data, model, optimizer, schedule, loaders), `train_one_epoch`, `validate`, and `save_state` /
`restore`. Batches come through one seam (`data.loader.make_train_loader` / `make_eval_loader`): the loop does not
know whether they were made by CPU workers or on the device. The step itself is in `steps` (eager, or one CUDA
graph).

Run directory: config.json (resolved), metrics.jsonl and metrics.csv (one line per epoch), last.pt / best.pt (full
checkpoints), model.safetensors (self-describing final model), eval.json, confusion.json/png, curves.png.

One trainer for every task: what differs between classification, detection and segmentation (the data, the model
for its classes, the batch, the named losses, the scores and how they are shown) is the task's (tasks/), which the
run holds; resumes, EMA, accumulation, DDP, progress, the expected time and the run folder serve them all.

The rooms: run.py (train, build_run), loop.py (fit, train_one_epoch, validate, finish), steps.py (the eager and
CUDA-graph steps, the optimizer), optim.py (the schedule), checkpoint.py (save and restore whole), outputs.py
(progress, metrics files), state.py (Run, TrainingError), rundir.py (run folders and their lock), finetune.py
(transfer learning: what trains when), estimate.py (the expected time); detection.py and segmentation.py keep the
names that were there before the tasks had rooms of their own."""

from .checkpoint import restore, save_state
from .loop import end_epoch, finish, fit, train_one_epoch, validate
from .optim import make_scheduler
from .run import build_run, train
from .state import Run, TrainingError

__all__ = [
    "Run",
    "TrainingError",
    "build_run",
    "end_epoch",
    "finish",
    "fit",
    "make_scheduler",
    "restore",
    "save_state",
    "train",
    "train_one_epoch",
    "validate",
]
