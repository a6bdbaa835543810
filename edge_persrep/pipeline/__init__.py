"""The server-side job end to end: `personalize` (request.py -> run_dir.py -> personalize.py) and
the bundles made from a run or a pretrained backbone (bundles.py)."""

from .bundles import export_bundle, export_pretrained, export_run
from .personalize import gather_negatives, personalize
from .request import DIFFUSION_POSITIVES, PersonalizeRequest, resolve_device
from .run_dir import RunDir

__all__ = ["DIFFUSION_POSITIVES", "PersonalizeRequest", "RunDir", "export_bundle", "export_pretrained", "export_run",
           "gather_negatives", "personalize", "resolve_device"]
