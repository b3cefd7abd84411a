"""The session layer (Qt view-model, no torch): what the widgets bind to.

- `core.Session`: the state and actions, composed of
- `params.Params`: the prompt panel's values,
- `document.Document`: the image being worked on and its mask,
- `jobs.JobBook`: the submitted jobs by kind, label and progress,
- `timeline.StepTimeline`: the step timeline of the last run,
- `library`: results on disk, earlier images, the model list.
"""

from .core import Session
from .document import Document
from .jobs import JobView
from .library import IMAGE_SUFFIXES
from .params import Params

__all__ = ["IMAGE_SUFFIXES", "Document", "JobView", "Params", "Session"]
