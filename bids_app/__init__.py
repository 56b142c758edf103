"""BlindHarmony: blind harmonization of T1-weighted MRI with a normalizing-flow prior.

The library (``bids_app.flow``, ``bids_app.harmonize``, ``bids_app.preprocess``) works on
arrays and tensors and never imports nipype or the command line; ``bids_app.interfaces``
wraps it for nipype and ``bids_app.workflows`` wires the interfaces together.
"""

from .__about__ import __copyright__, __packagename__, __url__, __version__

__all__ = ["__version__", "__packagename__", "__url__", "__copyright__"]
