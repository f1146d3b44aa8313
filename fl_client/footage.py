"""Real footage → clips: moved to :mod:`privacy.footage` (the server decodes too).

Kept so existing imports (``from fl_client.footage import load_footage``) go on working.
"""

from __future__ import annotations

from privacy.footage import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, load_footage

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "load_footage"]
