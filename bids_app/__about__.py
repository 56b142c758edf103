"""Version and identity of the BlindHarmony BIDS App."""

__version__ = "0.1.0"
__packagename__ = "blindharmony"
__url__ = "https://github.com/blindharmony/blindharmony"
__copyright__ = "Copyright 2026, The BlindHarmony developers"
