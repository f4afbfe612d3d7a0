"""Built-in tasks: classification, localization (box regression) and pose (keypoints).

One module per task; this package registers them through ``register_tasks``.
"""
from __future__ import annotations

from harness.api.lazy import lazy_exports
from harness import LazyCallable, TaskSpec, hookimpl

__all__ = ["Classification", "Localization", "Pose", "dense_head"]


@hookimpl
def register_tasks():
    # named by import path, imported when a task is built: bench list imports no torch
    return [
        TaskSpec("classification", factory=LazyCallable(".classification:Classification",
                                                         __package__), default=True,
                 description="top-1/top-5/macro-F1; head: 2 dense layers + output"),
        TaskSpec("localization", factory=LazyCallable(".localization:Localization", __package__),
                 description="one box (xmin,ymin,xmax,ymax in [0,1]); smooth-L1 + GIoU; "
                             "mean IoU, acc@IoU>=0.5"),
        TaskSpec("pose", factory=LazyCallable(".pose:Pose", __package__),
                 description="K keypoints: heatmaps on the spatial map + soft-argmax; PCK@0.2"),
    ]


# what used to be imported at the top, imported on first use
__getattr__ = lazy_exports(__name__, {
    'Classification': ('.classification', 'Classification'),
    'dense_head': ('.classification', 'dense_head'),
    'Localization': ('.localization', 'Localization'),
    'Pose': ('.pose', 'Pose'),
})
